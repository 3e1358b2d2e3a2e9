import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fourm_jax import modalities
from fourm_jax.convert.ml4m import relayout, state_dict
from fourm_jax.model.config import variant_config
from fourm_jax.model.example_batch import example_batch
from fourm_jax.model.fourm import FourM

INPUTS = ("rgb@224", "tok_semseg@224", "color_palette")
OUTPUTS = ("tok_semseg@224", "color_palette")
NUM_ENC, NUM_DEC = 24, 16


def _config(**overrides):
    base = dict(domains_in=INPUTS, domains_out=OUTPUTS, head_chunk_size=8, encoder_depth=2, decoder_depth=2)
    return variant_config("fm_test_tiny_swiglu_qknorm", **(base | overrides))


@pytest.fixture(scope="module")
def batch():
    batch = example_batch(INPUTS, OUTPUTS, 4, NUM_ENC, NUM_DEC, seed=2)
    # Sequence targets only train when two are adjacent (shifted next-token prediction).
    assert np.max((~batch["color_palette"]["target_mask"]).sum(1)) >= 2
    return jax.tree.map(jnp.asarray, batch)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _loss_and_grads(graphdef, state, batch, num_enc, num_dec):
    def loss(state):
        total, per_modality = nnx.merge(graphdef, state)(batch, num_enc, num_dec)
        return total, per_modality
    return jax.value_and_grad(loss, has_aux=True)(state)


@functools.partial(jax.jit, static_argnums=(0, 3, 4))
def _forward(graphdef, state, batch, num_enc, num_dec):
    return nnx.merge(graphdef, state)(batch, num_enc, num_dec)


def forward(model, batch):
    """(loss, per-modality losses), jitted with the parameters as arguments (not constants)."""
    return _forward(*nnx.split(model), batch, NUM_ENC, NUM_DEC)


def loss_and_grads(model, batch):
    """(loss, per-modality losses, gradients as ml-4m keyed numpy arrays: layout independent)."""
    graphdef, state = nnx.split(model)
    (loss, per_modality), grads = _loss_and_grads(graphdef, state, batch, NUM_ENC, NUM_DEC)
    return loss, per_modality, state_dict(nnx.merge(graphdef, grads))


def assert_same(a, b, atol=1e-6):
    loss_a, mods_a, grads_a = a
    loss_b, mods_b, grads_b = b
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    assert mods_a.keys() == mods_b.keys()
    assert grads_a.keys() == grads_b.keys()
    for key in grads_a:
        np.testing.assert_allclose(grads_a[key], grads_b[key], atol=atol, err_msg=key)


@pytest.fixture(scope="module")
def model():
    # Unscanned: on CPU its backward pass compiles several times faster than the scanned one.
    return FourM(_config(scan_layers=False), rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def reference(model, batch):
    return loss_and_grads(model, batch)


def test_loss_is_finite_and_gradients_reach_every_trained_parameter(reference):
    loss, per_modality, grads = reference
    assert np.isfinite(loss) and set(per_modality) == set(OUTPUTS)
    # Inputs-only parameters of the decoder-side image token embedding get no gradient (ml-4m feeds
    # the mask token instead); every other parameter does.
    unused = {"decoder_embeddings.tok_semseg@224.token_emb.weight"}
    for key, grad in grads.items():
        if key.endswith("pos_emb") or key.endswith(".bias") and not np.any(grad):
            continue
        assert np.any(grad != 0) != (key in unused), key


def test_scanned_layers_give_the_same_loss_and_gradients(model, batch, reference):
    scanned = relayout(model, dataclasses.replace(model.config, scan_layers=True))
    assert not isinstance(scanned.encoder.blocks, nnx.List)
    assert scanned.encoder.blocks.attn.qkv.kernel.shape[0] == model.config.encoder_depth
    assert_same(loss_and_grads(scanned, batch), reference)


def _with_config(model, **changes):
    """The same parameters under execution settings that must not change the numbers."""
    config = dataclasses.replace(model.config, **changes)
    return nnx.merge(nnx.graphdef(FourM(config, rngs=nnx.Rngs(1))), nnx.state(model))


def test_remat_gives_the_same_loss_and_gradients(model, batch, reference):
    assert_same(loss_and_grads(_with_config(model, remat_policy="full"), batch), reference)


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["dots", "dots_no_batch"])
def test_remat_policies_scanned(model, batch, reference, policy):
    scanned = relayout(model, dataclasses.replace(model.config, scan_layers=True, remat_policy=policy))
    assert_same(loss_and_grads(scanned, batch), reference)


def test_decoder_order_does_not_change_losses(model, batch):
    graphdef, state = nnx.split(model)
    run = jax.jit(lambda state, order: nnx.merge(graphdef, state)(
        batch, NUM_ENC, NUM_DEC, decoder_order=order), static_argnums=1)
    loss_a, mods_a = run(state, tuple(OUTPUTS))
    loss_b, mods_b = run(state, tuple(reversed(OUTPUTS)))
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    for name in OUTPUTS:
        np.testing.assert_allclose(mods_a[name], mods_b[name], rtol=1e-6)


def test_invalid_arguments_are_named(model, batch):
    with pytest.raises(ValueError, match="decoder_order"):
        model.decoder_modalities(batch, ["color_palette"])
    with pytest.raises(ValueError, match="num_encoder_tokens=100000"):
        model.select_encoder_tokens(batch, 100_000)


def test_logits_agree_with_the_grouped_loss(model, batch):
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state):
        m = nnx.merge(graphdef, state)
        loss, per_modality, logits = m(batch, NUM_ENC, NUM_DEC, loss_type="token", return_logits=True)
        dec = m.select_decoder_tokens(batch, NUM_DEC)
        return loss, per_modality, logits, dec

    loss, per_modality, logits, dec = run(state)
    weights, total = {}, 0.0
    for name in OUTPUTS:
        rows = np.asarray(dec.mod_mask) == modalities.get(name).id
        assert logits[name].shape == (4, NUM_DEC, modalities.get(name).vocab_size)
        lg = np.asarray(logits[name])[rows]
        ce = jax.nn.logsumexp(lg, -1) - lg[np.arange(len(lg)), np.asarray(dec.target_ids)[rows]]
        np.testing.assert_allclose(per_modality[name], np.mean(ce), rtol=1e-5)
        weights[name] = len(lg) * lg.shape[1]
        total += np.mean(ce) * weights[name]
    np.testing.assert_allclose(loss, total / sum(weights.values()), rtol=1e-5)


def test_register_tokens_come_first_and_are_never_padding(batch):
    model = FourM(_config(num_register_tokens=3, scan_layers=False), rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    enc = jax.jit(lambda state: nnx.merge(graphdef, state).select_encoder_tokens(batch, NUM_ENC))(state)
    assert enc.x.shape == (4, NUM_ENC + 3, model.config.dim)
    assert not np.any(enc.mask[:, :3]) and np.all(enc.mod_mask[:, :3] == -1)
    np.testing.assert_allclose(enc.x[:, :3], np.broadcast_to(model.register_tokens[...], (4, 3, 64)))
    loss, _ = forward(model, batch)
    assert np.isfinite(loss)


def test_shared_and_tied_embeddings():
    shared = FourM(_config(), rngs=nnx.Rngs(0))
    name = "tok_semseg@224"
    assert shared.decoder_embeddings[name].mod_emb is shared.encoder_embeddings[name].mod_emb
    separate = FourM(_config(share_modality_embeddings=False, tie_output_embeddings=True), rngs=nnx.Rngs(0))
    dec = separate.decoder_embeddings["color_palette"]
    assert dec.mod_emb is not separate.encoder_embeddings["color_palette"].mod_emb
    assert dec.to_logits is None
    np.testing.assert_array_equal(dec.head_kernel(), dec.token_emb[...].T)


def test_bfloat16_compute_keeps_float32_parameters(model, batch, reference):
    bf16 = _with_config(model, dtype="bfloat16")
    assert all(v.dtype == np.float32 for v in jax.tree.leaves(nnx.state(bf16)))
    loss, _ = forward(bf16, batch)
    np.testing.assert_allclose(loss, reference[0], rtol=2e-2)


def _decoder_inputs(model, batch_size=3, length=7, context_length=5, seed=0):
    rng = np.random.default_rng(seed)
    d = model.config.dim
    y = jnp.asarray(rng.standard_normal((batch_size, length, d)), jnp.float32)
    context = jnp.asarray(rng.standard_normal((batch_size, context_length, d)), jnp.float32)
    encoder_mask = jnp.asarray(np.arange(context_length)[None, :] >= np.array([[5], [2], [4]]))
    return y, context, encoder_mask


def test_cached_decode_steps_equal_causal_decode(model):
    """Unscanned layers here; the generation tests run the scanned ones (checkpoints' default)."""
    y, context, encoder_mask = _decoder_inputs(model)
    length = y.shape[1]
    causal = jnp.broadcast_to(jnp.triu(jnp.ones((length, length), bool), 1), (y.shape[0], length, length))
    full = jax.jit(model.decode)(y, context, encoder_mask, causal)

    @jax.jit
    def cached(y, context, encoder_mask):
        cache = model.init_decoder_cache(context, length + 2)  # spare slots stay unused
        outs = []
        # One token, then two at once: the cache takes any number of new tokens.
        for start, stop in ((0, 1), (1, 3), (3, 4), (4, 7)):
            out, cache = model.decode_step(y[:, start:stop], cache, jnp.asarray(start), encoder_mask)
            outs.append(out)
        return jnp.concatenate(outs, axis=1)

    np.testing.assert_allclose(cached(y, context, encoder_mask), full, atol=2e-5)


def test_empty_context_is_the_decoder_on_an_empty_encoder_sequence(model):
    """Rows flagged empty equal the decoder run on a zero-length context (ml-4m's sampler when no
    row of a pass has a visible encoder token); other rows are unchanged."""
    y, context, encoder_mask = _decoder_inputs(model)
    empty = jnp.asarray([True, False, True])

    @jax.jit
    def run(y, context, encoder_mask):
        flagged = model.decode(y, context, encoder_mask, None, empty_context_B=empty)
        no_context = model.decode(y, context[:, :0], encoder_mask[:, :0], None)
        plain = model.decode(y, context, encoder_mask, None)
        cache = model.init_decoder_cache(context, y.shape[1])
        step, _ = model.decode_step(y[:, :1], cache, jnp.asarray(0), encoder_mask, empty)
        first_token = model.decode(y[:, :1], context[:, :0], encoder_mask[:, :0], None)
        return flagged, no_context, plain, step, first_token

    flagged, no_context, plain, step, first_token = run(y, context, encoder_mask)
    np.testing.assert_allclose(flagged[0], no_context[0], atol=1e-5)
    np.testing.assert_allclose(flagged[2], no_context[2], atol=1e-5)
    np.testing.assert_allclose(flagged[1], plain[1], atol=1e-6)
    assert not np.allclose(plain[0], no_context[0], atol=1e-3)
    np.testing.assert_allclose(step[0], first_token[0], atol=1e-5)
