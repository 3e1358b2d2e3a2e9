"""4M model configuration: ml-4m's registered variants and validation of user configs.

`ModelConfig` is the frozen, hashable description the model is built from. Configs arrive as
ml_collections ConfigDicts (configs/*.py plus command-line overrides); `ModelConfig.from_config`
checks every field and names the offending one before anything is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import ml_collections

from fourm_jax import modalities
from fourm_jax.configs import ConfigError, reject_unknown_fields

ACTIVATIONS = ("gelu", "silu")
DTYPES = ("float32", "bfloat16", "float16")
LOSS_TYPES = ("mod", "token")
# What a rematerialised layer keeps for the backward pass: nothing but its input ("full"),
# every matmul output ("dots"), or matmul outputs without batch dimensions ("dots_no_batch").
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the 4M encoder-decoder (defaults: ml-4m's FourM defaults, 4M-7 domains)."""

    dim: int = 768
    encoder_depth: int = 12
    decoder_depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    norm_bias: bool = True
    act: str = "gelu"
    gated_mlp: bool = False
    qk_norm: bool = False
    norm_eps: float = 1e-6
    decoder_causal_mask: bool = False
    decoder_sep_mask: bool = True
    num_register_tokens: int = 0
    share_modality_embeddings: bool = True
    image_size: int = 224
    patch_size: int = 16
    domains_in: tuple[str, ...] = modalities.MODALITIES_4M7
    domains_out: tuple[str, ...] = tuple(m for m in modalities.MODALITIES_4M7 if m != "rgb@224")
    loss_type: str = "mod"
    dtype: str = "float32"  # compute dtype; parameters stay in param_dtype
    param_dtype: str = "float32"
    # Not in ml-4m: output heads tied to the decoder token embeddings (ml-4m's training path ties
    # them; its release loader and checkpoints keep two copies, which is the default here).
    tie_output_embeddings: bool = False
    # Execution choices that leave the numbers unchanged.
    scan_layers: bool = True  # one scanned block per stack (parameters with a leading `layers` axis)
    remat_policy: str = "none"
    head_chunk_size: int = 128  # decoder tokens per output-head matmul in the grouped loss

    def __post_init__(self):
        object.__setattr__(self, "domains_in", tuple(self.domains_in))
        object.__setattr__(self, "domains_out", tuple(self.domains_out))
        validate(self)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def mlp_hidden_dim(self) -> int:
        """ml-4m's rule: int(dim * ratio), and two thirds of it (truncated) for SwiGLU."""
        hidden = int(self.dim * self.mlp_ratio)
        return int(2 * hidden / 3) if self.gated_mlp else hidden

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ml_collections.ConfigDict,
                    prefix: str = "model") -> ModelConfig:
        """Builds from a (Config)dict, rejecting unknown keys; errors name `prefix.field`."""
        values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
        reject_unknown_fields(cls, values, prefix)
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(str(e).replace("model.", f"{prefix}.", 1)) from None

    def to_config(self) -> ml_collections.ConfigDict:
        values = dataclasses.asdict(self)
        values["domains_in"] = list(self.domains_in)
        values["domains_out"] = list(self.domains_out)
        return ml_collections.ConfigDict(values)


def _fail(field: str, message: str):
    raise ConfigError(f"model.{field}: {message}")


def validate(config: ModelConfig) -> None:
    """Raises ConfigError naming the first invalid field."""
    for field in ("dim", "num_heads", "image_size", "patch_size"):
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            _fail(field, f"must be a positive integer, got {value!r}")
    for field in ("encoder_depth", "decoder_depth", "num_register_tokens", "head_chunk_size"):
        value = getattr(config, field)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            _fail(field, f"must be a non-negative integer, got {value!r}")
    for field in ("encoder_depth", "decoder_depth", "head_chunk_size"):
        if getattr(config, field) == 0:
            _fail(field, "must be at least 1")
    if config.dim % config.num_heads:
        _fail("dim", f"{config.dim} is not divisible by model.num_heads={config.num_heads}")
    if not config.mlp_ratio > 0:
        _fail("mlp_ratio", f"must be positive, got {config.mlp_ratio!r}")
    if not config.norm_eps > 0:
        _fail("norm_eps", f"must be positive, got {config.norm_eps!r}")
    if config.act not in ACTIVATIONS:
        _fail("act", f"must be one of {ACTIVATIONS}, got {config.act!r}")
    if config.remat_policy not in REMAT_POLICIES:
        _fail("remat_policy", f"must be one of {REMAT_POLICIES}, got {config.remat_policy!r}")
    if config.loss_type not in LOSS_TYPES:
        _fail("loss_type", f"must be one of {LOSS_TYPES}, got {config.loss_type!r}")
    for field in ("dtype", "param_dtype"):
        if getattr(config, field) not in DTYPES:
            _fail(field, f"must be one of {DTYPES}, got {getattr(config, field)!r}")
    if config.image_size % config.patch_size:
        _fail("image_size", f"{config.image_size} is not divisible by model.patch_size={config.patch_size}")
    if config.dim % 4:
        _fail("dim", f"{config.dim} must be divisible by 4 (2-D sin-cos position embeddings)")
    if not config.domains_in:
        _fail("domains_in", "is empty")
    if not config.domains_out:
        _fail("domains_out", "is empty")
    for field, role in (("domains_in", "encoder"), ("domains_out", "decoder")):
        names = getattr(config, field)
        for i, name in enumerate(names):
            if not modalities.is_registered(name):
                _fail(f"{field}[{i}]", f"{name!r} is not a registered modality "
                      f"(known: {', '.join(modalities.names())})")
            if not getattr(modalities.get(name), role):
                _fail(f"{field}[{i}]", f"modality {name!r} has no {role} embedding in 4M")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            _fail(field, f"lists {', '.join(duplicates)} more than once")


def _variant(dim, depth, heads, swiglu=False, qk_norm=False) -> dict[str, Any]:
    common = dict(dim=dim, encoder_depth=depth, decoder_depth=depth, num_heads=heads, mlp_ratio=4.0)
    if not swiglu:
        return dict(common, act="gelu", gated_mlp=False, qkv_bias=True, proj_bias=True, mlp_bias=True,
                    norm_bias=True, qk_norm=False)
    return dict(common, act="silu", gated_mlp=True, qkv_bias=False, proj_bias=False, mlp_bias=False,
                norm_bias=False, qk_norm=qk_norm)


# Every variant ml-4m registers in fourm/models/fm.py (all with head_dim 64), by its name.
VARIANTS: dict[str, dict[str, Any]] = {
    "fm_tiny_6e_6d_gelu": _variant(384, 6, 6),
    "fm_small_8e_8d_gelu": _variant(512, 8, 8),
    "fm_base_12e_12d_gelu": _variant(768, 12, 12),
    "fm_large_24e_24d_gelu": _variant(1024, 24, 16),
    "fm_xlarge_24e_24d_gelu": _variant(2048, 24, 32),
    "fm_tiny_6e_6d_swiglu_nobias": _variant(384, 6, 6, swiglu=True),
    "fm_small_8e_8d_swiglu_nobias": _variant(512, 8, 8, swiglu=True),
    "fm_base_12e_12d_swiglu_nobias": _variant(768, 12, 12, swiglu=True),
    "fm_large_24e_24d_swiglu_nobias": _variant(1024, 24, 16, swiglu=True),
    "fm_xlarge_24e_24d_swiglu_nobias": _variant(2048, 24, 32, swiglu=True),
    "fm_base_12e_12d_swiglu_qknorm_nobias": _variant(768, 12, 12, swiglu=True, qk_norm=True),
    "fm_large_24e_24d_swiglu_qknorm_nobias": _variant(1024, 24, 16, swiglu=True, qk_norm=True),
    "fm_xlarge_24e_24d_swiglu_qknorm_nobias": _variant(2048, 24, 32, swiglu=True, qk_norm=True),
}

# Not an ml-4m variant: the smallest model that exercises every code path, for tests and the demo.
TEST_VARIANTS: dict[str, dict[str, Any]] = {
    "fm_test_tiny_gelu": _variant(64, 2, 4),
    "fm_test_tiny_swiglu_qknorm": _variant(64, 2, 4, swiglu=True, qk_norm=True),
}


def variant_config(name: str, **overrides: Any) -> ModelConfig:
    """The ModelConfig of a registered variant (ml-4m name, or a test variant), with overrides."""
    table = VARIANTS | TEST_VARIANTS
    if name not in table:
        raise ConfigError(f"unknown model variant {name!r}; known: {', '.join(table)}")
    return ModelConfig(**(table[name] | overrides))
