"""The sampler's behaviours beyond the ml-4m fixtures, on a tiny random model with 16-token image
modalities (tok_dinov2_global, tok_imagebind_global) and captions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fourm_jax import sharding
from fourm_jax.generate import (
    GenerationSampler,
    build_chained_generation_schedules,
    custom_text,
    init_empty_target_modality,
    init_full_input_modality,
)
from fourm_jax.generate import sampler as sampler_module
from fourm_jax.text.tokenizer import load_tokenizer
from tests.generate.conftest import A, B

S_2, EOS = 6, 3


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model


@pytest.fixture(scope="module")
def sampler(model):
    return GenerationSampler(model, shape_buckets=1)


def conditions(batch_size=2, seed=0) -> dict:
    """A given in full, a caption of 6 words + [EOS] in 10 slots."""
    rng = np.random.default_rng(seed)
    caption = np.zeros((batch_size, 10), np.int32)
    caption[:, :6] = rng.integers(5000, 30000, (batch_size, 6))
    caption[:, 6] = EOS
    tokens = rng.integers(0, 8192, (batch_size, 16)).astype(np.int32)
    mod_dict = {A: dict(tensor=tokens), "caption": dict(tensor=caption)}
    for domain in mod_dict:
        init_full_input_modality(mod_dict, domain)
    return mod_dict


def schedule(targets, schemes, steps, tokens=16, temps=1.0, cfg=1.0, cond=(A, "caption"), grow=False):
    return build_chained_generation_schedules(list(cond), list(targets), tokens, list(schemes), steps,
                                              "linear", temps, "constant", cfg, "constant",
                                              cfg_grow_conditioning=grow)


def inpainting_input(batch_size=2):
    """B with its first 6 positions given (different per row), the other 10 to generate."""
    mod_dict = conditions(batch_size)
    given = np.arange(16) < 6
    tensor = np.where(given, np.arange(batch_size)[:, None] * 100 + np.arange(16), 0).astype(np.int32)
    mod_dict[B] = dict(tensor=tensor, input_mask=np.broadcast_to(~given, (batch_size, 16)).copy(),
                       target_mask=np.broadcast_to(given, (batch_size, 16)).copy())
    return mod_dict


INPAINT_SCHEDULE = schedule([B], ["maskgit"], 3, tokens=10)


@pytest.fixture(scope="module")
def inpainted(sampler):
    return sampler.generate(inpainting_input(), INPAINT_SCHEDULE, seed=0, return_trace=True)


def test_inpainting_generates_only_targets_with_the_scheduled_counts(sampler, inpainted):
    mod_dict = inpainting_input()
    out, trace = inpainted
    given = ~mod_dict[B]["input_mask"]
    np.testing.assert_array_equal(out[B]["tensor"][given], mod_dict[B]["tensor"][given])
    assert not out[B]["input_mask"].any() and out[B]["target_mask"].all()
    steps = trace["step"][B]
    assert (steps[given] == -1).all()
    assert [[(row == s).sum() for s in range(3)] for row in steps] == [[4, 3, 3]] * 2  # linear(3, 10)
    assert {A, "caption"} <= set(out) and np.array_equal(out[A]["tensor"], mod_dict[A]["tensor"])
    # Deterministic from the seed; another seed samples other tokens.
    again = sampler.generate(mod_dict, INPAINT_SCHEDULE, seed=0)
    np.testing.assert_array_equal(again[B]["tensor"], out[B]["tensor"])
    other = sampler.generate(mod_dict, INPAINT_SCHEDULE, seed=1)
    assert not np.array_equal(other[B]["tensor"], out[B]["tensor"])


def test_sharded_batch_gives_the_same_samples(model, inpainted):
    mesh = sharding.make_mesh(dict(data=2), devices=jax.devices()[:2])
    sharded = GenerationSampler(model, mesh=mesh, shape_buckets=1)
    out = sharded.generate(inpainting_input(), INPAINT_SCHEDULE, seed=0)
    np.testing.assert_array_equal(out[B]["tensor"], inpainted[0][B]["tensor"])
    with pytest.raises(ValueError, match="batch size 3 is not a multiple of the 2 devices"):
        sharded.generate(inpainting_input(3), INPAINT_SCHEDULE)


def _caption_emptied(mod_dict):
    """The caption as ml-4m's unconditional pass sees it: only "[S_1]" visible."""
    caption = mod_dict["caption"]
    caption["tensor"][:] = 0
    caption["tensor"][:, :2] = 5
    caption["tensor"][:, -1] = S_2
    caption["input_mask"][:] = True
    caption["input_mask"][:, 0] = False
    return mod_dict


GUIDED_SCHEDULE = schedule([B], ["maskgit"], 2, temps=0.0, cfg=2.0, cond=(A,))


@pytest.fixture(scope="module")
def guided(sampler):
    """Greedy MaskGIT on B guided (2.0) by A, with the caption emptied."""
    mod_dict = _caption_emptied(conditions())
    init_empty_target_modality(mod_dict, B, 2, 16)
    return mod_dict, sampler.generate(mod_dict, GUIDED_SCHEDULE, seed=4)


@pytest.mark.parametrize("case", ["guided", "inpainting", "roar"])
def test_shape_buckets_do_not_change_results(model, sampler, guided, case):
    """Loops with shrinking query and encoder sizes (sized from the schedule, dispatched without
    waiting for each other) give what one loop gives: greedy, so that the draws do not depend on
    the number of queries."""
    if case == "guided":
        mod_dict, steps, buckets = guided[0], GUIDED_SCHEDULE, 2
    elif case == "inpainting":  # 10 of 16 positions remain
        mod_dict, steps, buckets = inpainting_input(), schedule([B], ["maskgit"], 3, tokens=10, temps=0.0), 3
    else:
        mod_dict = conditions()
        init_empty_target_modality(mod_dict, B, 2, 16)
        steps, buckets = schedule([B], ["roar"], 4, temps=0.0), 3
    one, one_trace = sampler.generate(mod_dict, steps, seed=4, return_trace=True)
    split, trace = GenerationSampler(model, shape_buckets=buckets).generate(mod_dict, steps, seed=4,
                                                                             return_trace=True)
    for key in ("tensor", "input_mask", "target_mask"):
        np.testing.assert_array_equal(split[B][key], one[B][key])
    np.testing.assert_array_equal(trace["step"][B], one_trace["step"][B])
    assert sorted(set(trace["step"][B].ravel()) - {-1}) == list(range(len(steps)))


def test_weighted_guidance_with_one_weight_is_classifier_free_guidance(sampler, guided):
    """Weights (w, 0) on (A, caption) equal guidance w on A with the caption emptied beforehand."""
    mod_dict = conditions()
    init_empty_target_modality(mod_dict, B, 2, 16)
    weighted = {w: sampler.generate(mod_dict, schedule([B], ["maskgit"], 2, temps=0.0, cfg=[[w, 0.0]]),
                                    seed=4) for w in (2.0, 1.0)}
    np.testing.assert_array_equal(weighted[2.0][B]["tensor"], guided[1][B]["tensor"])
    assert not np.array_equal(weighted[1.0][B]["tensor"], guided[1][B]["tensor"])  # the weight matters


def _biased_towards(model, token):
    """A copy of the model whose caption head always prefers `token` (constant decoder output)."""
    biased = nnx.clone(model)
    biased.decoder_norm.scale[...] = jnp.zeros_like(biased.decoder_norm.scale[...])
    biased.decoder_norm.bias[...] = jnp.ones_like(biased.decoder_norm.bias[...])
    kernel = biased.decoder_embeddings["caption"].to_logits.kernel
    kernel[...] = kernel[...].at[:, token].set(1.0)
    return biased


def test_autoregressive_captions_stop_at_the_final_sentinel(model, sampler):
    mod_dict = conditions()
    init_empty_target_modality(mod_dict, "caption", 2, 8)
    steps = schedule(["caption"], ["autoregressive"], 1, temps=0.0, cond=(A,))
    out, trace = sampler.generate(mod_dict, steps, return_trace=True)
    generated = trace["generated"]["caption"]
    assert generated.shape == (2, 8) and (generated[:, 0] == 5).all()  # [S_1], then 7 tokens
    assert out["caption"]["tensor"].shape[1] >= 1 and not out["caption"]["input_mask"][:, 0].any()
    # A head that always says [S_2] ends every row at once: nothing is generated, the caption is empty.
    biased = GenerationSampler(_biased_towards(model, S_2), shape_buckets=1)
    out, trace = biased.generate(mod_dict, steps, return_trace=True)
    np.testing.assert_array_equal(trace["generated"]["caption"], [[5, S_2]] * 2)
    assert out["caption"]["input_mask"].all()


def test_custom_text_completes_the_given_words(model, shared_dir):
    tokenizer = load_tokenizer(shared_dir / "vocab" / "text_tokenizer_4m_wordpiece_30k.json")
    mod_dict = custom_text({}, "a red cube [S_1]", "[EOS]", "caption", tokenizer, target_max_len=6)
    mod_dict[A] = conditions(1)[A]
    steps = schedule(["caption"], ["autoregressive"], 1, temps=0.5, cfg=2.0, cond=(A,))
    out = GenerationSampler(_biased_towards(model, EOS), shape_buckets=1).generate(mod_dict, steps)
    assert tokenizer.decode(out["caption"]["tensor"][0]) == "a red cube [EOS]"


@pytest.mark.parametrize("change, message", [
    (lambda d, s: d.update({"tok_foo@224": d[A]}), "'tok_foo@224'.*unknown modality"),
    (lambda d, s: d.update({"tok_depth@224": d[A]}), "'tok_depth@224'.*no embedding for it"),
    (lambda d, s: d.update({"rgb@224": dict(tensor=np.zeros((2, 3, 128, 128), np.float32),
                                            input_mask=np.zeros((2, 64), bool),
                                            target_mask=np.ones((2, 64), bool))}), "takes 224x224 images"),
    (lambda d, s: s.__setitem__(0, dict(s[0], target_domain="rgb@224")), "cannot generate it"),
    (lambda d, s: s.__setitem__(0, dict(s[0], num_tokens=17)), "decodes 17 tokens but only 16 target"),
    (lambda d, s: d[A]["tensor"].__setitem__((0, 0), 9000), "ids must be in \\[0, 8192\\)"),
    (lambda d, s: s.__setitem__(0, dict(s[0], cfg_scale=2.0, cfg_cond_domains=["det"])), "'det' is not in"),
])
def test_bad_input_is_named_before_anything_compiles(sampler, change, message):
    mod_dict = conditions()
    init_empty_target_modality(mod_dict, B, 2, 16)
    steps = schedule([B], ["maskgit"], 2)
    change(mod_dict, steps)
    def compiled():
        return sampler_module._image_segment._cache_size(), sampler_module._sequence_segment._cache_size()

    before = compiled()
    with pytest.raises(ValueError, match=message):
        sampler.generate(mod_dict, steps)
    assert compiled() == before
