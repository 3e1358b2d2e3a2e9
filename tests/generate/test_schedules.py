"""Schedules against the numbers ml-4m produces (../shared/reference, part A3) and the builder's rules."""

import numpy as np
import pytest

from fourm_jax.generate.schedules import (
    build_chained_generation_schedules,
    continue_schedule,
    cosine_schedule,
    linear_schedule,
    linear_temp_schedule,
    onex_temp_schedule,
)


def test_cosine_schedule_matches_ml4m():
    assert cosine_schedule(8, 784).tolist() == [30, 85, 127, 150, 150, 127, 85, 30]
    assert cosine_schedule(8, 196).tolist() == [7, 21, 32, 38, 38, 32, 21, 7]
    assert cosine_schedule(25, 196).tolist() == [1, 2, 4, 5, 7, 8, 9, 10, 11, 11, 12, 12, 12, 12, 12, 11, 11,
                                                 10, 9, 8, 7, 5, 4, 2, 1]


def test_linear_schedule_matches_ml4m():
    assert linear_schedule(49, 196).tolist() == [4] * 49
    assert linear_schedule(25, 196).tolist() == [8] * 21 + [7] * 4
    assert linear_schedule(8, 196).tolist() == [25, 25, 25, 25, 24, 24, 24, 24]
    assert linear_schedule(1, 196).tolist() == [196]
    assert linear_schedule(300, 196).tolist() == [1] * 196  # zero steps trimmed


def test_continue_schedule_keeps_the_total():
    rest = continue_schedule(np.array([7, 21, 32, 38]), 30)
    assert rest.tolist() == [30, 38]


def test_temperature_schedules_match_ml4m():
    np.testing.assert_allclose(linear_temp_schedule(1.0, cosine_schedule(8, 784)),
                               [1.0, 0.962, 0.853, 0.691, 0.5, 0.309, 0.147, 0.038], atol=1e-3)
    onex = onex_temp_schedule(3.0, 0.5, linear_schedule(8, 196), power=0.5)
    np.testing.assert_allclose(onex, [2.681, 1.978, 1.536, 1.220, 0.984, 0.794, 0.635, 0.5], atol=1e-3)
    long = onex_temp_schedule(6.0, 0.5, linear_schedule(49, 196), power=0.5)
    np.testing.assert_allclose(long[:3], [5.888, 4.688, 3.967], atol=1e-3)
    assert long[-1] == pytest.approx(0.5)


def _build(**overrides):
    args = dict(cond_domains=["caption"], target_domains=["tok_clip@224", "tok_rgb@224", "det"],
                tokens_per_target=[196, 196, 256],
                autoregression_schemes=["roar", "maskgit", "autoregressive"],
                decoding_steps=[49, 8, 1], token_decoding_schedules=["linear", "cosine", "linear"],
                temps=[6.0, 1.0, 0.3], temp_schedules=["onex:0.5:0.5", "linear", "constant"],
                cfg_scales=[3.0, 2.0, 1.5], cfg_schedules="constant", cfg_grow_conditioning=True)
    return build_chained_generation_schedules(**(args | overrides))


def test_chained_schedule_structure():
    steps = _build()
    assert len(steps) == 49 + 8 + 1
    clip, rgb, det = steps[:49], steps[49:57], steps[57]
    assert all(s["scheme"] == "roar" and s["num_tokens"] == 4 for s in clip)
    assert all(s["cfg_cond_domains"] == ["caption"] for s in clip)
    assert clip[0]["temperature"] == pytest.approx(5.888, abs=1e-3)
    assert [s["num_tokens"] for s in rgb] == [7, 21, 32, 38, 38, 32, 21, 7]
    assert all(s["cfg_cond_domains"] == ["caption", "tok_clip@224"] for s in rgb)  # grown
    # An autoregressive target: one step, no token count; never joins the guided conditions.
    assert det == dict(target_domain="det", scheme="autoregressive", num_tokens=None, temperature=0.3,
                       cfg_scale=1.5, cfg_cond_domains=["caption", "tok_clip@224", "tok_rgb@224"])
    without_growth = _build(cfg_grow_conditioning=False)
    assert all(s["cfg_cond_domains"] == ["caption"] for s in without_growth)


def test_single_values_repeat_and_weight_lists_are_per_step():
    steps = build_chained_generation_schedules(["caption", "tok_depth@224"], ["tok_rgb@224"], 196, "maskgit",
                                               4, "cosine", 1.0, "constant", [[2.0, 0.5]], "constant")
    assert [s["cfg_scale"] for s in steps] == [[2.0, 0.5]] * 4


@pytest.mark.parametrize("overrides, message", [
    (dict(decoding_steps=[300, 8, 1]), "300 decoding steps for 196 tokens"),
    (dict(autoregression_schemes=["roar", "maskgit", "maskgit"]), "does not fit a sequence"),
    (dict(autoregression_schemes=["autoregressive", "maskgit", "autoregressive"]),
     "does not fit a image_tokens"),
    (dict(autoregression_schemes=["random", "maskgit", "autoregressive"]), "unknown scheme 'random'"),
    (dict(temp_schedules=["cubic", "linear", "constant"]), "unknown temperature schedule 'cubic'"),
    (dict(temp_schedules=["onex:0.5", "linear", "constant"]), "onex:<min_t>:<power>"),
    (dict(cfg_schedules="cosine"), "cosine guidance schedule is not implemented"),
    (dict(token_decoding_schedules=["linear", "square", "linear"]), "unknown token schedule 'square'"),
    (dict(temps=[1.0, 2.0]), "temps: got 2 values for 3 target domains"),
    (dict(target_domains=["tok_clip@224", "tok_rgb@999", "det"]), "'tok_rgb@999'.*unknown modality"),
    (dict(tokens_per_target=[196, 16, 256]), "cosine schedule of 8 steps over 16 tokens has a negative step"),
])
def test_bad_schedules_are_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        _build(**overrides)
