import dataclasses

import pytest

from fourm_jax.model.config import VARIANTS, ConfigError, ModelConfig, variant_config

# (dim, depth, heads, FFN hidden, gated, biases, qk_norm) per ml-4m variant, from
# ../shared/reference/ml4m-model.md section 1.
EXPECTED = {
    "fm_tiny_6e_6d_gelu": (384, 6, 6, 1536, False, True, False),
    "fm_small_8e_8d_gelu": (512, 8, 8, 2048, False, True, False),
    "fm_base_12e_12d_gelu": (768, 12, 12, 3072, False, True, False),
    "fm_large_24e_24d_gelu": (1024, 24, 16, 4096, False, True, False),
    "fm_xlarge_24e_24d_gelu": (2048, 24, 32, 8192, False, True, False),
    "fm_tiny_6e_6d_swiglu_nobias": (384, 6, 6, 1024, True, False, False),
    "fm_small_8e_8d_swiglu_nobias": (512, 8, 8, 1365, True, False, False),
    "fm_base_12e_12d_swiglu_nobias": (768, 12, 12, 2048, True, False, False),
    "fm_large_24e_24d_swiglu_nobias": (1024, 24, 16, 2730, True, False, False),
    "fm_xlarge_24e_24d_swiglu_nobias": (2048, 24, 32, 5461, True, False, False),
    "fm_base_12e_12d_swiglu_qknorm_nobias": (768, 12, 12, 2048, True, False, True),
    "fm_large_24e_24d_swiglu_qknorm_nobias": (1024, 24, 16, 2730, True, False, True),
    "fm_xlarge_24e_24d_swiglu_qknorm_nobias": (2048, 24, 32, 5461, True, False, True),
}


def test_every_ml4m_variant_is_registered():
    assert set(VARIANTS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_variant_hyperparameters(name):
    dim, depth, heads, hidden, gated, biases, qk_norm = EXPECTED[name]
    c = variant_config(name)
    assert (c.dim, c.encoder_depth, c.decoder_depth, c.num_heads) == (dim, depth, depth, heads)
    assert c.head_dim == 64
    assert c.mlp_hidden_dim == hidden
    assert c.gated_mlp == gated and c.act == ("silu" if gated else "gelu")
    assert (c.qkv_bias, c.proj_bias, c.mlp_bias, c.norm_bias) == (biases,) * 4
    assert c.qk_norm == qk_norm
    assert c.norm_eps == 1e-6


def test_roundtrip_through_configdict():
    c = variant_config("fm_test_tiny_gelu", dim=128)
    assert ModelConfig.from_config(c.to_config()) == c


@pytest.mark.parametrize("overrides, field", [
    (dict(dim=100, num_heads=3), "model.dim"),
    (dict(encoder_depth=-1), "model.encoder_depth"),
    (dict(decoder_depth=0), "model.decoder_depth"),
    (dict(num_heads=0), "model.num_heads"),
    (dict(act="relu"), "model.act"),
    (dict(dtype="float64"), "model.dtype"),
    (dict(domains_in=("rgb@224", "tok_nope")), r"model.domains_in\[1\]"),
    (dict(domains_out=("rgb@224",)), r"model.domains_out\[0\].*no decoder"),
    (dict(domains_out=("caption", "caption")), "model.domains_out"),
    (dict(image_size=100), "model.image_size"),
])
def test_invalid_config_names_field(overrides, field):
    values = dataclasses.asdict(variant_config("fm_test_tiny_gelu")) | overrides
    with pytest.raises(ConfigError, match=field):
        ModelConfig(**values)


def test_unknown_field_is_named():
    config = variant_config("fm_test_tiny_gelu").to_config()
    config.unlock()
    config.dimm = 3
    with pytest.raises(ConfigError, match="model.dimm"):
        ModelConfig.from_config(config)


def test_unknown_variant():
    with pytest.raises(ConfigError, match="unknown model variant 'fm_huge'"):
        variant_config("fm_huge")
