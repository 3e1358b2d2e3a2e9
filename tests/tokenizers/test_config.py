"""Tokenizer config validation and the tokenizer specs in tokenizers/."""

import pytest

from fourm_jax import modalities
from fourm_jax.configs import ConfigError
from fourm_jax.data import scenes
from fourm_jax.tokenizers import NetConfig, TokenizerConfig, specs
from fourm_jax.tokenizers.config import from_ml4m_net

VIT = dict(type="vit", dim=32, depth=1, num_heads=2)
SPECS = ["scenes_rgb", "scenes_depth", "scenes_normal", "scenes_semseg"]


def test_from_config_builds_nets_from_dicts():
    values = dict(modality="rgb", image_size=32, patch_size=8, encoder=VIT, decoder=VIT)
    config = TokenizerConfig.from_config(values)
    assert config.encoder == NetConfig("vit", 32, 1, 2) and config.token_shape(48, 32) == (6, 4)


@pytest.mark.parametrize("values, message", [
    (dict(codebook_sise=3), "unknown field.*tokenizer.codebook_sise"),
    (dict(encoder=dict(VIT, width=3)), r"tokenizer.encoder.width"),
    (dict(encoder=dict(VIT, num_heads=3)), "tokenizer.encoder.num_heads: must be a positive divisor"),
    (dict(image_size=36), "tokenizer.image_size: 36 is not divisible by tokenizer.patch_size=8"),
    (dict(modality="semseg"), "tokenizer.n_labels: is required for modality 'semseg'"),
    (dict(quant_type="fsq"), "tokenizer.quant_type: must be one of"),
    (dict(quant_type="memcodes", num_codebooks=3), "tokenizer.latent_dim: 16 is not divisible"),
    (dict(modality="vector"), "tokenizer.modality: 'vector' goes with a bottleneck_mlp encoder"),
    (dict(modality="feature_map"), "tokenizer.patch_proj: must be False"),
    (dict(ema_decay=1.0), r"tokenizer.ema_decay: must be in \[0, 1\)"),
])
def test_invalid_configs_name_the_field(values, message):
    base = dict(modality="rgb", image_size=32, patch_size=8, encoder=VIT, decoder=VIT, latent_dim=16)
    with pytest.raises(ConfigError, match=message):
        TokenizerConfig.from_config(base | values)


def test_ml4m_net_names():
    assert from_ml4m_net("vit_b_enc", "enc_type") == NetConfig("vit", 768, 12, 12)
    assert from_ml4m_net("vit_l_dec", "dec_type") == NetConfig("vit", 1024, 24, 16)
    mlp = NetConfig("bottleneck_mlp", 1024, 6, 0, 4.0)
    assert from_ml4m_net("BottleneckMLP/B_6-Wi_1024", "enc_type") == mlp
    assert from_ml4m_net("vit_96d_3l_4h_enc", "enc_type") == NetConfig("vit", 96, 3, 4)


@pytest.mark.parametrize("name", SPECS)
def test_scenes_specs_load(repo_dir, name):
    spec = specs.load(f"{repo_dir}/tokenizers/{name}.py")
    assert spec.config.dataset == "scenes/64px" and spec.config.image_size == 64
    assert spec.tokenizer.modality == spec.config.field
    assert spec.tokenizer.token_shape(64, 64) == (8, 8)
    assert spec.config.train.steps > 0 and spec.loss.loss_fn in ("mse", "smooth_l1", "cross_entropy")


def test_spec_overrides_and_errors(repo_dir):
    spec = specs.load(f"{repo_dir}/tokenizers/scenes_rgb.py",
                      ["tokenizer.codebook_size=512", "train.base_lr=0.5"])
    assert spec.tokenizer.codebook_size == 512 and spec.config.train.base_lr == 0.5
    with pytest.raises(ConfigError, match="tokenizer.encoder.num_heads"):
        specs.load(f"{repo_dir}/tokenizers/scenes_rgb.py", ["tokenizer.encoder.num_heads=3"])
    with pytest.raises(ConfigError, match="differs from image_size"):
        specs.load(f"{repo_dir}/tokenizers/scenes_rgb.py", ["image_size=128"])
    with pytest.raises(ConfigError, match="unknown train field"):
        specs.make_spec(dataset="d", field="rgb", image_size=8, tokenizer={}, train=dict(learning_rate=1))
    with pytest.raises(ConfigError, match="unknown spec field"):
        specs.make_spec(dataset="d", field="rgb", image_size=8, tokenizer={}, datadir="x")
    with pytest.raises(ConfigError, match="format 'zip'"):
        specs.load(f"{repo_dir}/tokenizers/scenes_rgb.py", ["format=zip"])


@pytest.mark.parametrize("name", SPECS)
def test_scenes_specs_match_their_modalities(repo_dir, name):
    """Codebook sizes are the vocabularies of the scenes token modalities; semseg's labels cover
    the dataset's classes after ml-4m's shift by one (0 = no class)."""
    spec = specs.load(f"{repo_dir}/tokenizers/{name}.py")
    modality = modalities.get(f"tok_{spec.config.field}@64")
    assert spec.tokenizer.codebook_size == modality.vocab_size
    assert spec.tokenizer.token_grid(64, 64) == (modality.grid_size, modality.grid_size)
    if spec.tokenizer.modality == "semseg":
        assert spec.tokenizer.n_labels == len(scenes.CLASS_NAMES) + 1 == 7
