import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fourm_jax.train import optimizer


def ml4m_cosine_array(base, final, total, warmup):
    """ml-4m's scheduler.cosine_scheduler, restated: numpy linspace warmup then cosine."""
    warm = np.linspace(0, base, warmup) if warmup > 0 else np.array([])
    iters = np.arange(total - warmup)
    cos = np.array([final + 0.5 * (base - final) * (1 + math.cos(math.pi * i / len(iters))) for i in iters])
    return np.concatenate([warm, cos])


@pytest.mark.parametrize("total, warmup, final", [(100, 10, 0.0), (57, 0, 1e-5), (20, 1, 0.0),
                                                   (30, 30, 0.0)])
def test_schedule_matches_ml4m_array(total, warmup, final):
    expected = ml4m_cosine_array(3.2e-3, final, total, warmup)
    schedule = optimizer.warmup_cosine_schedule(3.2e-3, total, warmup, final)
    got = np.asarray(schedule(jnp.arange(total)))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-10)
    assert float(schedule(total + 5)) == pytest.approx(expected[-1], rel=1e-5, abs=1e-10)


def test_lr_scaling_rule():
    assert optimizer.scaled_lr(1e-4, 8192) == pytest.approx(3.2e-3)


def test_weight_decay_mask_follows_ml4m_names():
    params = {
        "encoder": {"0": {"norm1": {"scale": 1, "bias": 1}, "attn": {"qkv": {"kernel": 1, "bias": 1},
                                                                     "q_norm": {"scale": 1}}}},
        "encoder_norm": {"scale": 1},
        "decoder": {"0": {"query_norm": {"scale": 1}, "context_norm": {"scale": 1}}},
        "decoder_proj_context": {"kernel": 1, "bias": 1},
        "mask_token": 1,
        "encoder_embeddings": {"caption": {"mod_emb": 1, "token_emb": {"embedding": 1}}},
    }
    mask = optimizer.weight_decay_mask(params)
    assert mask["encoder"]["0"]["attn"]["qkv"] == {"kernel": True, "bias": False}
    assert mask["encoder"]["0"]["norm1"] == {"scale": False, "bias": False}
    assert mask["encoder"]["0"]["attn"]["q_norm"]["scale"] is False
    assert mask["encoder_norm"]["scale"] is False
    assert mask["decoder"]["0"] == {"query_norm": {"scale": False}, "context_norm": {"scale": False}}
    assert mask["decoder_proj_context"] == {"kernel": True, "bias": False}
    assert mask["mask_token"] is True
    assert mask["encoder_embeddings"]["caption"] == {"mod_emb": True, "token_emb": {"embedding": True}}


CONFIG = dict(base_lr=0.256, min_base_lr=0.0, weight_decay=0.5, b1=0.9, b2=0.95, eps=1e-8, clip_grad=0.0,
              skip_nonfinite=True)
STEPS = dict(global_batch=256, total_steps=10, warmup_steps=2)


def test_adamw_step_matches_hand_computation():
    tx, schedule = optimizer.make_optimizer(CONFIG, **STEPS)
    params = {"w": jnp.array([1.0, -2.0]), "norm": {"scale": jnp.array([1.0])}}
    grads = {"w": jnp.array([0.5, 0.5]), "norm": {"scale": jnp.array([0.5])}}
    state = tx.init(params)
    for _ in range(2):
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
    # Step 0 has lr 0; step 1 has lr 0.256 (peak). Adam's normalised update with constant grads is
    # 1 (bias-corrected m / sqrt(v)); decay multiplies the old value by lr * wd for decayed params.
    lr = 0.256
    expected_w = np.array([1.0, -2.0]) - lr * (1.0 + 0.5 * np.array([1.0, -2.0]))
    np.testing.assert_allclose(params["w"], expected_w, rtol=1e-5)
    np.testing.assert_allclose(params["norm"]["scale"], [1.0 - lr * 1.0], rtol=1e-5)


def test_nonfinite_gradients_skip_and_count():
    tx, _ = optimizer.make_optimizer(CONFIG, **STEPS)
    params = {"w": jnp.ones(2)}
    state = tx.init(params)
    updates, state = tx.update({"w": jnp.array([jnp.nan, 1.0])}, state, params)
    assert np.all(np.asarray(updates["w"]) == 0)
    assert int(optimizer.skipped_steps(state)) == 1
    updates, state = tx.update({"w": jnp.array([1.0, 1.0])}, state, params)
    assert int(optimizer.skipped_steps(state)) == 1


def test_clipping():
    tx, _ = optimizer.make_optimizer(CONFIG | dict(clip_grad=1.0), **(STEPS | dict(warmup_steps=0)))
    params = {"w": jnp.zeros(2)}
    state = tx.init(params)
    big = {"w": jnp.array([300.0, 400.0])}
    small = {"w": jnp.array([0.6, 0.8])}
    u_big, _ = tx.update(big, state, params)
    u_small, _ = tx.update(small, state, params)
    np.testing.assert_allclose(u_big["w"], u_small["w"], rtol=1e-5)


def test_schedule_rejects_bad_steps():
    with pytest.raises(ValueError, match="warmup_steps"):
        optimizer.warmup_cosine_schedule(1.0, 10, 11)
    assert jax.numpy.isfinite(optimizer.warmup_cosine_schedule(1.0, 1, 0)(0))


def test_a_skipped_step_keeps_adam_state_but_the_schedule_advances():
    """ml-4m skips optimizer.step() on NaN gradients but indexes its lr array by the global step."""
    tx, schedule = optimizer.make_optimizer(CONFIG | dict(weight_decay=0.0), **STEPS)
    params = {"w": jnp.zeros(1)}
    state = tx.init(params)
    _, state = tx.update({"w": jnp.array([jnp.inf])}, state, params)  # step 0: skipped
    updates, state = tx.update({"w": jnp.array([1.0])}, state, params)  # step 1: Adam's first step
    # Adam's first step (count 1) moves by exactly lr; the lr is that of global step 1, the peak.
    np.testing.assert_allclose(updates["w"], [-float(schedule(1))], rtol=1e-5)
    assert float(schedule(1)) == pytest.approx(0.256)
    assert int(optimizer.skipped_steps(state)) == 1


def ml4m_no_decay(torch_name: str) -> bool:
    """ml-4m's optim_factory rule on torch parameter names."""
    return ("norm." in torch_name or ".norm" in torch_name or torch_name.endswith(".bias")
            or torch_name.endswith(".lookup_table_weight") or torch_name.endswith(".gamma"))


@pytest.mark.parametrize("variant", ["fm_test_tiny_gelu", "fm_test_tiny_swiglu_qknorm"])
def test_weight_decay_mask_matches_ml4m_on_every_fourm_parameter(variant):
    """Our mask on the real parameter paths equals ml-4m's name rule on the ml-4m keys they map to."""
    from flax import nnx

    from fourm_jax.convert import ml4m
    from fourm_jax.model.config import variant_config
    from fourm_jax.model.fourm import abstract_fourm
    from fourm_jax.train import checkpoint

    config = variant_config(variant, domains_in=("rgb@224", "tok_rgb@224", "caption", "t5_caption",
                                                  "tok_dinov2_global"),
                            domains_out=("tok_rgb@224", "caption", "tok_dinov2_global"),
                            num_register_tokens=1, scan_layers=False)
    model = abstract_fourm(config)
    mask = optimizer.weight_decay_mask(checkpoint.params_tree(nnx.state(model, nnx.Param)))
    flat_mask = {"/".join(optimizer._names(path)): decayed
                 for path, decayed in jax.tree_util.tree_leaves_with_path(mask)}
    expected = {}  # a shared variable (mod_emb) sits at its first path only
    for entry in ml4m.entries(model):
        path = "/".join(map(str, entry.path or ()))
        if path in flat_mask:
            expected.setdefault(path, not ml4m_no_decay(entry.key))
    assert flat_mask == expected
    assert not flat_mask["decoder_proj_context/bias"] and flat_mask["mask_token"]


def test_optimizer_config_names_bad_fields():
    with pytest.raises(ValueError, match="optimizer.lr"):
        optimizer.OptimizerConfig.from_config(dict(lr=1.0))
    with pytest.raises(ValueError, match="optimizer.b2"):
        optimizer.OptimizerConfig.from_config(dict(b2=1.0))
