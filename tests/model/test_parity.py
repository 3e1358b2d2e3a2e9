"""Parity with ml-4m on every fixture under tests/fixtures/parity (or $FOURM_PARITY_FIXTURES).

Each fixture's weights are rebuilt from its manifest, converted with our converter (ml-4m
safetensors -> Orbax checkpoint -> model), and every batch is run; losses, encoder and decoder
activations and logits are compared with what ml-4m computed, at the fixture README's tolerances.
"""

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from fourm_jax import modalities
from fourm_jax.convert import files
from fourm_jax.train import checkpoint
from tests.model.parity_fixtures import batches, fixture_dirs, materialise_weights, tolerances

FIXTURES = fixture_dirs()


def test_fixtures_found():
    assert FIXTURES, "no parity fixture directory (with manifest.json) found"


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 5))
def _run(graphdef, state, batch, num_enc, num_dec, order):
    model = nnx.merge(graphdef, state)
    losses = {t: model(batch, num_enc, num_dec, decoder_order=order, loss_type=t) for t in ("mod", "token")}
    enc = model.select_encoder_tokens(batch, num_enc)
    dec = model.select_decoder_tokens(batch, num_dec, order)
    encoder_out = model.encode(enc.x + enc.emb, enc.mask)
    context = model.decoder_context(encoder_out, enc.emb)
    y = model.decode(dec.x + dec.emb, context, enc.mask, dec.attention_mask)
    return losses, enc, encoder_out, dec, y


@pytest.fixture(scope="module", params=FIXTURES, ids=[p.name for p in FIXTURES])
def fixture(request, tmp_path_factory):
    """(fixture dir, model converted ml4m -> orbax -> loaded)."""
    directory: pathlib.Path = request.param
    tmp = tmp_path_factory.mktemp(directory.name)
    (tmp / "ml4m").mkdir()
    materialise_weights(directory, tmp / "ml4m" / files.WEIGHTS_FILE)
    (tmp / "ml4m" / files.CONFIG_FILE).write_text((directory / "config.json").read_text())
    files.convert("ml4m", tmp / "ml4m", "orbax", tmp / "orbax")
    return directory, checkpoint.load_model(tmp / "orbax")


def _check_logits(model, name, y, dec, expected, prefix, atol):
    """Logits rows of one modality (row-major over sample, position), summarised as in the fixture."""
    rows = np.argwhere(np.asarray(dec.mod_mask) == modalities.get(name).id)
    np.testing.assert_array_equal(rows[:, 0], expected[f"{prefix}/sample"], err_msg=prefix)
    targets = expected[f"{prefix}/target"]
    np.testing.assert_array_equal(np.asarray(dec.target_ids)[tuple(rows.T)], targets, err_msg=prefix)
    logits = np.asarray(model.logits(name, np.asarray(y)[tuple(rows.T)]))
    assert logits.shape[1] == expected[f"{prefix}/vocab_size"], prefix
    close = functools.partial(np.testing.assert_allclose, atol=atol, rtol=0, err_msg=prefix)
    close(jax.nn.logsumexp(logits, -1), expected[f"{prefix}/logsumexp"])
    close(logits[np.arange(len(rows)), targets], expected[f"{prefix}/at_target"])
    close(logits[:, expected[f"{prefix}/vocab_subset"]], expected[f"{prefix}/subset"])


def test_parity(fixture):
    directory, model = fixture
    tol = tolerances(directory)
    expected = np.load(directory / "expected.npz")
    keys = set(expected.files)
    close = functools.partial(np.testing.assert_allclose, atol=tol["activation_atol"], rtol=0)
    graphdef, state = nnx.split(model)
    for b, (batch, num_enc, num_dec) in batches(directory).items():
        order_key = next((k for k in (f"{b}/decoder/order", f"{b}/decoder_order") if k in keys), None)
        order = tuple(str(m) for m in expected[order_key]) if order_key else None
        batch = jax.tree.map(jnp.asarray, batch)
        losses, enc, encoder_out, dec, y = _run(graphdef, state, batch, num_enc, num_dec, order)
        for loss_type, (total, per_modality) in losses.items():
            prefix = f"{b}/{loss_type}"
            named = {k.split("/")[-1] for k in keys if k.startswith(prefix + "/")} - {"loss"}
            assert set(per_modality) == named, prefix
            for name, value in dict(per_modality, loss=total).items():
                np.testing.assert_allclose(value, expected[f"{prefix}/{name}"], rtol=tol["loss_rtol"],
                                           err_msg=f"{prefix}/{name}")
        for key in (k for k in keys if k.startswith(f"{b}/num_targets/")):
            name = key.split("/")[-1]
            assert np.sum(np.asarray(dec.mod_mask) == modalities.get(name).id) == expected[key], key
        for side, tokens in (("encoder", enc), ("decoder", dec)):
            if f"{b}/num_valid_{side}_tokens" in keys:
                valid = np.sum(~np.asarray(tokens.mask), axis=1)
                np.testing.assert_array_equal(valid, expected[f"{b}/num_valid_{side}_tokens"])
        if f"{b}/encoder/output" in keys:
            np.testing.assert_array_equal(enc.mask, expected[f"{b}/encoder/mask"])
            np.testing.assert_array_equal(enc.mod_mask, expected[f"{b}/encoder/mod_mask"])
            close(encoder_out, expected[f"{b}/encoder/output"], err_msg=f"{b}/encoder/output")
        if f"{b}/decoder/output" in keys:
            for field in ("mod_mask", "target_ids", "attention_mask"):
                np.testing.assert_array_equal(getattr(dec, field), expected[f"{b}/decoder/{field}"],
                                              err_msg=field)
            close(y, expected[f"{b}/decoder/output"], err_msg=f"{b}/decoder/output")
        for name in {k.split("/")[2] for k in keys if k.startswith(f"{b}/logits/")}:
            _check_logits(model, name, y, dec, expected, f"{b}/logits/{name}", tol["activation_atol"])
    for key in (k for k in keys if k.startswith("modality_id/")):
        assert modalities.get(key.split("/", 1)[1]).id == expected[key], key
