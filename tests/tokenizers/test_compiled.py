"""Compiled, batch-sharded encode and decode over the 8 simulated devices."""

import jax
import numpy as np
import pytest
from jax.sharding import AxisType, PartitionSpec

from fourm_jax.tokenizers import VQVAE, NetConfig, TokenizerConfig, compiled

VIT = NetConfig("vit", 32, 1, 2)


@pytest.fixture(scope="module")
def setup():
    tok = VQVAE(TokenizerConfig(modality="rgb", image_size=16, patch_size=8, encoder=VIT, decoder=VIT,
                                codebook_size=16, latent_dim=8))
    variables = tok.init(jax.random.key(0))
    x = np.random.default_rng(0).uniform(-1, 1, (16, 16, 16, 3)).astype(np.float32)
    tokens = np.asarray(tok.encode(variables, x))
    return tok, variables, x, tokens, np.asarray(tok.decode(variables, tokens))


@pytest.mark.parametrize("axis_type", [AxisType.Explicit, AxisType.Auto])
def test_sharded_encode_decode_match_single_device(setup, axis_type):
    tok, variables, x, tokens, decoded = setup
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(axis_type,) * 2)
    sharded_tokens = compiled.encode_fn(tok, mesh)(compiled.replicate(variables, mesh),
                                                   jax.device_put(x, compiled.batch_sharding(mesh)))
    assert sharded_tokens.sharding.spec == PartitionSpec(("data", "fsdp"))
    np.testing.assert_array_equal(np.asarray(sharded_tokens), tokens)
    sharded_decoded = compiled.decode_fn(tok, mesh)(variables, sharded_tokens)
    np.testing.assert_allclose(np.asarray(sharded_decoded), decoded, atol=1e-5)


def test_mesh_without_fsdp_and_batch_size_check(setup):
    tok, variables, x, tokens, _ = setup
    mesh = jax.make_mesh((8,), ("data",))
    assert compiled.batch_sharding(mesh).spec == PartitionSpec(("data",))
    np.testing.assert_array_equal(np.asarray(compiled.encode_fn(tok, mesh)(variables, x)), tokens)
    with pytest.raises(ValueError, match="batch size 4 is not a multiple of the 8 devices"):
        compiled.encode_fn(tok, mesh)(variables, x[:4])


def test_encode_of_raw_values_normalises_on_the_device(setup):
    tok, variables, _, _, _ = setup
    mesh = jax.make_mesh((8,), ("data",))
    raw = np.random.default_rng(1).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    expected = np.asarray(tok.encode(variables, (raw / 255.0 - 0.5) / 0.5))
    tokens = compiled.encode_fn(tok, mesh, raw=True)(variables, raw)
    np.testing.assert_array_equal(np.asarray(tokens), expected)
