"""The VQ-VAE for every input kind: shapes, encode/lookup/decode consistency, ml-4m round trips.

ml-4m parity of the shared code paths is in test_ml4m.py; here are the variants the fixtures do not
cover (several lucid heads, Euclidean codes, ConvNeXt out_conv, feature maps, single-head Memcodes),
each also written in ml-4m's format and read back.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fourm_jax.tokenizers import VQVAE, NetConfig, TokenizerConfig, ml4m

VIT = NetConfig("vit", 32, 1, 2)
MLP = NetConfig("bottleneck_mlp", 32, 1, 0, 2)
BASE = dict(image_size=32, patch_size=8, encoder=VIT, decoder=VIT, codebook_size=16, latent_dim=8)
VECTOR = dict(BASE, modality="vector", n_channels=12, encoder=MLP, decoder=MLP, quant_type="memcodes")
VARIANTS = {
    "rgb_post_mlp": dict(BASE, modality="rgb", post_mlp=True),
    "semseg": dict(BASE, modality="semseg", n_labels=5, n_channels=4),
    "lucid_2_heads": dict(BASE, modality="depth", n_channels=1, num_codebooks=2),
    "euclidean_out_conv": dict(BASE, modality="image", n_channels=2, norm_codes=False, out_conv=True),
    "feature_map": dict(BASE, modality="feature_map", n_channels=6, patch_proj=False, image_size=64,
                        patch_size=16),
    "memcodes_4_heads": dict(VECTOR, num_codebooks=4),
    "memcodes_1_head": VECTOR,
}
EXPECTED = {  # (input shape, token shape, output shape) for a batch of 2 at 32 px
    "rgb_post_mlp": ((2, 32, 32, 3), (2, 4, 4), (2, 32, 32, 3)),
    "semseg": ((2, 32, 32), (2, 4, 4), (2, 32, 32, 5)),
    "lucid_2_heads": ((2, 32, 32, 1), (2, 2, 4, 4), (2, 32, 32, 1)),
    "euclidean_out_conv": ((2, 32, 32, 2), (2, 4, 4), (2, 32, 32, 2)),
    "feature_map": ((2, 4, 4, 6), (2, 4, 4), (2, 4, 4, 6)),
    "memcodes_4_heads": ((2, 12), (2, 4, 1, 1), (2, 12)),
    "memcodes_1_head": ((2, 12), (2, 1, 1), (2, 12)),
}


def random_input(config, shape, seed=0):
    rng = np.random.default_rng(seed)
    if config.modality == "semseg":
        return jnp.asarray(rng.integers(0, config.n_labels, shape))
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def run(tok, variables, x):
    """Every entry point at once (one compile per variant)."""
    tokens = tok.encode(variables, x)
    quant, quant_tokens = tok.quantize(variables, tok.encode_latents(variables, x))
    return dict(tokens=tokens, quant=quant, quant_tokens=quant_tokens, lookup=tok.lookup(variables, tokens),
                decoded=tok.decode(variables, tokens), autoencoded=tok.autoencode(variables, x))


@pytest.mark.parametrize("name", VARIANTS)
def test_variant(name, tmp_path):
    tok = VQVAE(TokenizerConfig(**VARIANTS[name]))
    variables = tok.init(jax.random.key(0))
    in_shape, token_shape, out_shape = EXPECTED[name]
    got = run(tok, variables, random_input(tok.config, in_shape))
    tokens = got["tokens"]
    assert tokens.shape == token_shape and tokens.dtype == jnp.int32
    assert 0 <= int(tokens.min()) and int(tokens.max()) < tok.config.codebook_size
    if tok.config.modality != "vector":
        assert token_shape[1:] == tok.config.token_shape(*in_shape[1:3])
    np.testing.assert_array_equal(got["quant_tokens"], tokens)
    np.testing.assert_allclose(got["lookup"], got["quant"], rtol=1e-6, atol=1e-6)
    assert got["decoded"].shape == out_shape and np.isfinite(np.asarray(got["decoded"])).all()
    np.testing.assert_allclose(got["autoencoded"], got["decoded"], rtol=1e-5, atol=1e-5)
    # ml-4m format round trip.
    loaded_tok, loaded = ml4m.load(ml4m.save(tmp_path / name, tok, variables))
    assert loaded_tok.config == tok.config
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables), strict=True):
        np.testing.assert_array_equal(a, b)


def test_other_input_sizes_resize_the_position_tables():
    tok = VQVAE(TokenizerConfig(**VARIANTS["rgb_post_mlp"]))
    variables = tok.init(jax.random.key(0))
    tokens = tok.encode(variables, random_input(tok.config, (1, 48, 64, 3)))
    assert tokens.shape == (1, 6, 8)
    assert tok.decode(variables, tokens).shape == (1, 48, 64, 3)


def test_the_quantizer_sees_the_codebook_in_buffers():
    """Tokens come from buffers['quantizer']['embed']: moving one code onto a latent claims it."""
    tok = VQVAE(TokenizerConfig(**VARIANTS["rgb_post_mlp"]))
    variables = tok.init(jax.random.key(0))
    x = random_input(tok.config, (1, 32, 32, 3))
    z = tok.encode_latents(variables, x)
    embed = variables["buffers"]["quantizer"]["embed"].at[7].set(z[0, 1, 2] * 100)
    variables = {"params": variables["params"], "buffers": {**variables["buffers"], "quantizer": {
        **variables["buffers"]["quantizer"], "embed": embed}}}
    assert int(tok.encode(variables, x)[0, 1, 2]) == 7


def test_encoder_only_cannot_decode():
    tok = VQVAE(TokenizerConfig(**dict(VARIANTS["rgb_post_mlp"], decoder=None)))
    variables = tok.init(jax.random.key(0))
    assert "decoder" not in variables["params"] and "post_quant_proj" not in variables["params"]
    with pytest.raises(ValueError, match="encoder-only"):
        tok.decode(variables, jnp.zeros((1, 4, 4), jnp.int32))
    assert not tok.needs_rng


def test_wrong_input_is_named_at_trace_time():
    tok = VQVAE(TokenizerConfig(**VARIANTS["rgb_post_mlp"]))
    variables = tok.init(jax.random.key(0))
    with pytest.raises(ValueError, match=r"tokenizer input: expected rgb input of shape \[B, H, W, 3\]"):
        tok.encode(variables, jnp.zeros((1, 32, 32, 4)))
    with pytest.raises(ValueError, match="tokenizer input: size 36x32 is not divisible by the patch size 8"):
        tok.encode(variables, jnp.zeros((1, 36, 32, 3)))
