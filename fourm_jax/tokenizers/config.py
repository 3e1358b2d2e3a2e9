"""Tokenizer configuration: ml-4m's VQ-VAE constructor arguments as one frozen, validated dataclass.

Field names follow ml-4m's `VQ`/`VQVAE` kwargs (so an imported config.json reads the same), except
that the encoder and decoder networks are described by `NetConfig` instead of preset names
(`vit_b_enc`, `BottleneckMLP/B_6-Wi_1024`); `from_ml4m_net` resolves those names.

`modality` says what the tokenizer eats and returns, i.e. which input handling applies
(fourm_jax.tokenizers.inputs):
  rgb, normal, image   float images in [-1, 1]-ish `[B, H, W, C]`
  depth                robustly standardised depth `[B, H, W, 1]`
  semseg               class ids `[B, H, W]` (int), embedded with `cls_emb`; decodes to logits
  feature_map          teacher features `[B, h, w, C]` (no patch projection)
  vector               global vectors `[B, C]` (MLP bottleneck, usually Memcodes)
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import ml_collections

from fourm_jax.configs import ConfigError, reject_unknown_fields

MODALITIES = ("rgb", "depth", "normal", "semseg", "image", "feature_map", "vector")
NET_TYPES = ("vit", "bottleneck_mlp")
QUANT_TYPES = ("lucid", "memcodes")
REPLACEMENT_POLICIES = ("batch_random", "linde_buzo_gray")


@dataclasses.dataclass(frozen=True)
class NetConfig:
    """An encoder or decoder network: a ViT (dim, depth, num_heads, mlp_ratio) or a BottleneckMLP
    (dim = width, depth = number of blocks, mlp_ratio = expansion factor)."""

    type: str = "vit"
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0


# ml-4m's ViT presets (fourm/vq/models/vit_models.py); `_enc` and `_dec` share the sizes.
VIT_PRESETS = {
    "vit_s": NetConfig("vit", 512, 8, 8),
    "vit_b": NetConfig("vit", 768, 12, 12),
    "vit_l": NetConfig("vit", 1024, 24, 16),
}


def from_ml4m_net(name: str, field: str,
                  vit_presets: Mapping[str, Mapping[str, Any]] | None = None) -> NetConfig:
    """Resolves an ml-4m enc_type/dec_type string. `vit_presets` adds ViT sizes by name, in the
    format of the tokenizer fixtures' manifest (`dim_tokens`, `depth`, `num_heads`, `mlp_ratio`)."""
    if vit_presets and name in vit_presets:
        preset = vit_presets[name]
        return NetConfig("vit", int(preset["dim_tokens"]), int(preset["depth"]), int(preset["num_heads"]),
                         float(preset.get("mlp_ratio", 4.0)))
    base = re.fullmatch(r"(vit_[sbl])_(enc|dec)", name)
    if base:
        return VIT_PRESETS[base.group(1)]
    custom = re.fullmatch(r"vit_(\d+)d_(\d+)l_(\d+)h_(enc|dec)", name)  # written by ml4m.save
    if custom:
        dim, depth, heads = map(int, custom.groups()[:3])
        return NetConfig("vit", dim, depth, heads)
    mlp = re.fullmatch(r"BottleneckMLP/B_(\d+)-Wi_(\d+)(?:-E_(\d+))?", name)
    if mlp:
        blocks, width, expansion = mlp.groups()
        return NetConfig("bottleneck_mlp", int(width), int(blocks), 0, float(expansion or 4))
    raise ConfigError(f"{field}: unsupported network {name!r}; known: vit_{{s,b,l}}_{{enc,dec}}, "
                      "vit_<dim>d_<depth>l_<heads>h_{enc,dec}, "
                      "BottleneckMLP/B_<blocks>-Wi_<width>[-E_<expansion>] (diffusion decoders such as "
                      "unet_patched are not implemented yet; load such tokenizers encoder-only)")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
    """A VQ-VAE tokenizer (defaults: ml-4m's VQ/VQVAE defaults; ViT-B encoder and decoder)."""

    modality: str = "rgb"
    image_size: int = 224
    image_size_enc: int | None = None  # size the encoder's position table was built for
    image_size_dec: int | None = None
    n_channels: int = 3
    n_labels: int | None = None
    encoder: NetConfig = NetConfig()
    decoder: NetConfig | None = NetConfig()  # None: encoder-only (tokenization)
    patch_proj: bool = True
    post_mlp: bool = False
    out_conv: bool = False
    patch_size: int = 16
    patch_size_dec: int | None = None
    quant_type: str = "lucid"
    codebook_size: int = 16384
    num_codebooks: int = 1
    latent_dim: int = 32
    norm_codes: bool = True
    norm_latents: bool = False
    ema_decay: float = 0.99
    threshold_ema_dead_code: float = 0.25
    code_replacement_policy: str = "batch_random"
    commitment_weight: float = 1.0
    undo_std: bool = False

    def __post_init__(self):
        for field in ("encoder", "decoder"):
            value = getattr(self, field)
            if isinstance(value, Mapping):
                object.__setattr__(self, field, NetConfig(**value))
        validate(self)

    @property
    def enc_grid(self) -> int:
        """Side of the encoder's stored position grid."""
        return (self.image_size_enc or self.image_size) // self.patch_size

    @property
    def dec_patch_size(self) -> int:
        return self.patch_size_dec or self.patch_size

    @property
    def dec_grid(self) -> int:
        return (self.image_size_dec or self.image_size) // self.dec_patch_size

    @property
    def out_channels(self) -> int:
        return self.n_labels or self.n_channels

    @property
    def token_patch(self) -> int:
        """Input pixels per token side (1 for feature maps and vectors)."""
        return self.patch_size if self.patch_proj and self.encoder.type == "vit" else 1

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.token_patch, width // self.token_patch

    def token_shape(self, height: int, width: int) -> tuple[int, ...]:
        """Shape of one example's tokens: `(h, w)`, or `(heads, h, w)` with several codebooks."""
        grid = self.token_grid(height, width)
        return grid if self.num_codebooks == 1 else (self.num_codebooks, *grid)

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | ml_collections.ConfigDict,
                    prefix: str = "tokenizer") -> TokenizerConfig:
        """Builds from a (Config)dict, rejecting unknown keys; errors name `prefix.field`."""
        values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
        reject_unknown_fields(cls, values, prefix)
        for field in ("encoder", "decoder"):
            if isinstance(values.get(field), Mapping):
                reject_unknown_fields(NetConfig, values[field], f"{prefix}.{field}")
        try:
            return cls(**values)
        except ConfigError as e:
            raise ConfigError(str(e).replace("tokenizer.", f"{prefix}.", 1)) from None

    def to_config(self) -> ml_collections.ConfigDict:
        return ml_collections.ConfigDict(dataclasses.asdict(self))


def _fail(field: str, message: str):
    raise ConfigError(f"tokenizer.{field}: {message}")


def _positive_int(config, field):
    value = getattr(config, field)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        _fail(field, f"must be a positive integer, got {value!r}")


def _validate_net(net: NetConfig, field: str):
    if net.type not in NET_TYPES:
        _fail(f"{field}.type", f"must be one of {NET_TYPES}, got {net.type!r}")
    for name in ("dim", "depth"):
        value = getattr(net, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            _fail(f"{field}.{name}", f"must be a positive integer, got {value!r}")
    if not net.mlp_ratio > 0:
        _fail(f"{field}.mlp_ratio", f"must be positive, got {net.mlp_ratio!r}")
    if net.type == "vit":
        if not isinstance(net.num_heads, int) or net.num_heads <= 0 or net.dim % net.num_heads:
            _fail(f"{field}.num_heads", f"must be a positive divisor of {field}.dim={net.dim}, "
                  f"got {net.num_heads!r}")
        if net.dim % 4:
            _fail(f"{field}.dim", f"{net.dim} must be divisible by 4 (2-D sin-cos position embeddings)")


def validate(config: TokenizerConfig) -> None:
    """Raises ConfigError naming the first invalid field."""
    if config.modality not in MODALITIES:
        _fail("modality", f"must be one of {MODALITIES}, got {config.modality!r}")
    for field in ("image_size", "n_channels", "patch_size", "codebook_size", "num_codebooks", "latent_dim"):
        _positive_int(config, field)
    for field in ("image_size_enc", "image_size_dec", "n_labels", "patch_size_dec"):
        if getattr(config, field) is not None:
            _positive_int(config, field)
    _validate_net(config.encoder, "encoder")
    if config.decoder is not None:
        _validate_net(config.decoder, "decoder")
    if config.quant_type not in QUANT_TYPES:
        _fail("quant_type", f"must be one of {QUANT_TYPES}, got {config.quant_type!r}")
    if config.code_replacement_policy not in REPLACEMENT_POLICIES:
        _fail("code_replacement_policy",
              f"must be one of {REPLACEMENT_POLICIES}, got {config.code_replacement_policy!r}")
    if not 0 <= config.ema_decay < 1:
        _fail("ema_decay", f"must be in [0, 1), got {config.ema_decay!r}")
    if config.threshold_ema_dead_code < 0:
        _fail("threshold_ema_dead_code", f"must be >= 0, got {config.threshold_ema_dead_code!r}")
    if config.quant_type == "memcodes" and config.latent_dim % config.num_codebooks:
        _fail("latent_dim", f"{config.latent_dim} is not divisible by tokenizer.num_codebooks="
              f"{config.num_codebooks} (Memcodes splits the latent into heads)")
    if (config.modality == "semseg") != (config.n_labels is not None):
        _fail("n_labels", "is required for modality 'semseg' and only for it")
    if config.encoder.type == "vit":
        size_enc = config.image_size_enc or config.image_size
        if size_enc % config.patch_size:
            _fail("image_size_enc" if config.image_size_enc else "image_size",
                  f"{size_enc} is not divisible by tokenizer.patch_size={config.patch_size}")
    if config.decoder is not None and config.decoder.type == "vit":
        size_dec = config.image_size_dec or config.image_size
        if size_dec % config.dec_patch_size:
            _fail("image_size_dec" if config.image_size_dec else "image_size",
                  f"{size_dec} is not divisible by the decoder patch size {config.dec_patch_size}")
    if (config.modality == "vector") != (config.encoder.type == "bottleneck_mlp"):
        _fail("modality", "'vector' goes with a bottleneck_mlp encoder and only with it, got "
              f"modality {config.modality!r} with tokenizer.encoder.type={config.encoder.type!r}")
    if config.modality == "feature_map" and config.patch_proj:
        _fail("patch_proj", "must be False for modality 'feature_map' (features are already a grid)")
    if config.out_conv and (config.decoder is None or config.decoder.type != "vit"):
        _fail("out_conv", "needs a ViT decoder")
