"""Config files load, take overrides and validate."""

import pytest

from fourm_jax import configs
from fourm_jax.model.config import VARIANTS, ConfigError, ModelConfig


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_model_preset_by_variant_name(repo_dir, variant):
    config = configs.load(f"{repo_dir}/configs/model.py:{variant}")
    assert config.variant == variant
    assert ModelConfig.from_config(config.model).dim == VARIANTS[variant]["dim"]


def test_dotted_overrides(repo_dir):
    config = configs.load(f"{repo_dir}/configs/model.py:fm_test_tiny_gelu",
                          ["model.dim=256", "model.mlp_ratio=2", "model.domains_out=['caption']"])
    model = ModelConfig.from_config(config.model)
    assert (model.dim, model.mlp_ratio, model.domains_out) == (256, 2.0, ("caption",))


def test_override_of_missing_field_is_named(repo_dir):
    with pytest.raises(KeyError, match="model.dimm"):
        configs.load(f"{repo_dir}/configs/model.py", ["model.dimm=3"])


def test_invalid_override_fails_validation(repo_dir):
    config = configs.load(f"{repo_dir}/configs/model.py:fm_test_tiny_gelu", ["model.num_heads=3"])
    with pytest.raises(ConfigError, match="model.dim: 64 is not divisible by model.num_heads=3"):
        ModelConfig.from_config(config.model)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nope.py"):
        configs.load("configs/nope.py")
