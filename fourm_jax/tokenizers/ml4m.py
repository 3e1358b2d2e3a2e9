"""ml-4m tokenizer checkpoints <-> our variables, without torch.

A released tokenizer is a directory with `model.safetensors` (the PyTorch state dict; its
`__metadata__` holds every constructor argument as a string that ml-4m YAML-parses back) and
`config.json` (the same arguments, for the Hugging Face hub loader). `load` reads either, builds a
`TokenizerConfig`, checks every tensor against the shape that config implies and converts the
layouts (Linear `[out, in]` -> `[in, out]`, Conv2d `[O, I, kh, kw]` -> channels-last, position
tables `[1, D, h, w]` -> `[h, w, D]`, decoder `out_proj` rows from (c, ph, pw) to (ph, pw, c)
order). `save` writes the same format back.

Rules: a checkpoint key the config does not expect, a key it expects that is missing, or a shape
that differs is an error naming the file, the key and both shapes. Decoder keys are accepted and
dropped when loading encoder-only (what tokenization needs, also for DiVAE checkpoints whose
diffusion decoder is not implemented here).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import safetensors
import safetensors.numpy
import yaml

from fourm_jax.configs import ConfigError
from fourm_jax.files import write_atomic
from fourm_jax.tokenizers.config import VIT_PRESETS, NetConfig, TokenizerConfig, from_ml4m_net
from fourm_jax.tokenizers.vqvae import VQVAE

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MAX_LEN_YAML_PARSE = 10_000  # ml-4m keeps longer metadata strings unparsed

# Constructor arguments of ml-4m's VQ/VQVAE that only matter for training in PyTorch or for
# loading there; they carry no information about the weights.
_IGNORED_CONFIG_KEYS = {"sync_codebook", "kmeans_init", "ckpt_path", "ignore_keys", "freeze_enc",
                        "enable_xformer", "use_xformer"}
# Keys that make a checkpoint a DiVAE (diffusion decoder).
_DIFFUSION_KEYS = {"num_train_timesteps", "beta_schedule", "prediction_type", "scheduler",
                   "zero_terminal_snr", "cls_free_guidance_dropout", "masked_cfg", "masked_cfg_low",
                   "masked_cfg_high", "clip_sample", "thresholding", "conditioning",
                   "dec_transformer_dropout"}
_FIELDS = {f.name for f in dataclasses.fields(TokenizerConfig)} - {"modality", "encoder", "decoder"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not match its config; the message names the file
    and the key."""


# ----------------------------------------------------------------------------- config

def parse_metadata(metadata: Mapping[str, str]) -> dict[str, Any]:
    """ml-4m's `safe_parse_metadata`: YAML-parse each value, `None` read as null."""
    parsed = {}
    for key, value in metadata.items():
        if not isinstance(value, str) or len(value) > MAX_LEN_YAML_PARSE:
            parsed[key] = value
            continue
        try:
            parsed[key] = yaml.safe_load(value.replace("None", "null"))
        except yaml.YAMLError:
            parsed[key] = value
    return parsed


def is_diffusion(ml4m_config: Mapping[str, Any]) -> bool:
    dec_type = str(ml4m_config.get("dec_type") or "")
    return bool(_DIFFUSION_KEYS & set(ml4m_config)) or dec_type.startswith(("unet", "uvit"))


def config_from_ml4m(ml4m_config: Mapping[str, Any], *, modality: str | None = None,
                     encoder_only: bool = False,
                     vit_presets: Mapping[str, Mapping[str, Any]] | None = None) -> TokenizerConfig:
    """TokenizerConfig of an ml-4m VQ/VQVAE config dict (missing keys take ml-4m's defaults).

    `modality` defaults to what the config implies: semseg with `n_labels`, vector with an MLP
    encoder, feature_map without patch projection, else a generic `image`.
    """
    values = {k: v for k, v in ml4m_config.items() if k in _FIELDS and v is not None}
    try:
        if "codebook_size" in values:
            values["codebook_size"] = int(values["codebook_size"])
    except ValueError:
        raise ConfigError(f"codebook_size: {ml4m_config['codebook_size']!r} is not one integer (FSQ-style "
                          "codebooks are not part of ml-4m's tokenizers)") from None
    encoder = from_ml4m_net(str(ml4m_config.get("enc_type", "vit_b_enc")), "enc_type", vit_presets)
    decoder = None
    if not encoder_only:
        if is_diffusion(ml4m_config):
            raise ConfigError(f"dec_type: {ml4m_config.get('dec_type')!r} is a diffusion decoder (DiVAE), "
                              "not implemented yet; load this tokenizer with encoder_only=True to tokenize")
        decoder = from_ml4m_net(str(ml4m_config.get("dec_type", "vit_b_dec")), "dec_type", vit_presets)
    modality = modality or ml4m_config.get("modality")  # written by `save`; ml-4m ignores it
    if modality is None:
        if values.get("n_labels") is not None:
            modality = "semseg"
        elif encoder.type == "bottleneck_mlp":
            modality = "vector"
        elif not values.get("patch_proj", True):
            modality = "feature_map"
        else:
            modality = "image"
    return TokenizerConfig(modality=modality, encoder=encoder, decoder=decoder, **values)


def _net_name(net: NetConfig, suffix: str) -> str:
    if net.type == "bottleneck_mlp":
        expansion = "" if net.mlp_ratio == 4 else f"-E_{int(net.mlp_ratio)}"
        return f"BottleneckMLP/B_{net.depth}-Wi_{net.dim}{expansion}"
    for name, preset in VIT_PRESETS.items():
        if preset == net:
            return f"{name}_{suffix}"
    return f"vit_{net.dim}d_{net.depth}l_{net.num_heads}h_{suffix}"


def config_to_ml4m(config: TokenizerConfig) -> dict[str, Any]:
    """The ml-4m VQVAE kwargs of a config, plus `modality` (which ml-4m's **kwargs swallow). ViT
    sizes that ml-4m has no preset for are named `vit_<dim>d_<depth>l_<heads>h_{enc,dec}` (register
    that preset to build them in ml-4m)."""
    values = {f: getattr(config, f) for f in sorted(_FIELDS)}
    values["modality"] = config.modality
    values["enc_type"] = _net_name(config.encoder, "enc")
    if config.decoder is not None:
        values["dec_type"] = _net_name(config.decoder, "dec")
    values["sync_codebook"] = False
    return values


# ----------------------------------------------------------------------------- layout conversions

@dataclasses.dataclass(frozen=True)
class _Layout:
    """How one tensor differs between ml-4m (torch) and us; both directions work on numpy arrays
    and on shape-only values (jax.eval_shape)."""

    to_ours: Callable[[Any], Any]
    to_torch: Callable[[Any], Any]


_SAME = _Layout(lambda a: a, lambda a: a)
_LINEAR = _Layout(lambda a: a.T, lambda a: a.T)
_CONV_1X1 = _Layout(lambda a: a.reshape(a.shape[:2]).T, lambda a: a.T.reshape(*a.T.shape, 1, 1))
_POS_EMB = _Layout(lambda a: a[0].transpose(1, 2, 0), lambda a: a.transpose(2, 0, 1)[None])
_DEPTHWISE = _Layout(lambda a: a.transpose(2, 3, 1, 0), lambda a: a.transpose(3, 2, 0, 1))


def _patch_embed(patch: int, channels: int) -> _Layout:
    """Conv2d `[D, C, P, P]` <-> dense `[P*P*C, D]` over (ph, pw, c) patches."""
    return _Layout(lambda a: a.transpose(2, 3, 1, 0).reshape(patch * patch * channels, -1),
                   lambda a: a.reshape(patch, patch, channels, -1).transpose(3, 2, 0, 1))


def _out_proj_kernel(patch: int, channels: int) -> _Layout:
    """Linear `[C*P*P, D]` (rows in (c, ph, pw) order) <-> dense `[D, P*P*C]` ((ph, pw, c) order)."""
    return _Layout(
        lambda a: a.reshape(channels, patch, patch, -1).transpose(3, 1, 2, 0).reshape(a.shape[1], -1),
        lambda a: a.reshape(-1, patch, patch, channels).transpose(3, 1, 2, 0).reshape(-1, a.shape[0]))


def _out_proj_bias(patch: int, channels: int) -> _Layout:
    return _Layout(lambda a: a.reshape(channels, patch, patch).transpose(1, 2, 0).reshape(-1),
                   lambda a: a.reshape(patch, patch, channels).transpose(2, 0, 1).reshape(-1))


@dataclasses.dataclass(frozen=True)
class _Entry:
    key: str  # ml-4m state-dict key
    path: tuple[str, ...]  # where it lives in our variables
    layout: _Layout = _SAME
    layer: int | None = None  # index on the stacked-layers axis


def _dense(key, path, layer=None, layout=_LINEAR):
    return [_Entry(f"{key}.weight", (*path, "kernel"), layout, layer),
            _Entry(f"{key}.bias", (*path, "bias"), _SAME, layer)]


def _norm(key, path, layer=None):
    return [_Entry(f"{key}.weight", (*path, "scale"), _SAME, layer),
            _Entry(f"{key}.bias", (*path, "bias"), _SAME, layer)]


def _vit_blocks(prefix: str, path: tuple, depth: int) -> list[_Entry]:
    entries = []
    blocks = (*path, "blocks")
    for i in range(depth):
        key = f"{prefix}.blocks.{i}"
        entries += _norm(f"{key}.norm1", (*blocks, "norm1"), i) + _norm(f"{key}.norm2", (*blocks, "norm2"), i)
        entries += _dense(f"{key}.attn.qkv", (*blocks, "attn", "qkv"), i)
        entries += _dense(f"{key}.attn.proj", (*blocks, "attn", "proj"), i)
        entries += _dense(f"{key}.mlp.fc1", (*blocks, "mlp", "fc1"), i)
        entries += _dense(f"{key}.mlp.fc2", (*blocks, "mlp", "fc2"), i)
    return entries


def _post_mlp(prefix: str, path: tuple) -> list[_Entry]:
    post = (*path, "post_mlp")
    return (_norm(f"{prefix}.norm_mlp", (*post, "norm_mlp"))
            + _dense(f"{prefix}.post_mlp.fc1", (*post, "fc1"))
            + _dense(f"{prefix}.post_mlp.fc2", (*post, "fc2")))


def _mlp(prefix: str, path: tuple, depth: int) -> list[_Entry]:
    entries = _dense(f"{prefix}.linear_in", (*path, "linear_in")) + _dense(f"{prefix}.linear_out",
                                                                          (*path, "linear_out"))
    for i in range(depth):
        entries += _dense(f"{prefix}.blocks.{i}.block.0", (*path, "blocks", "fc1"), i)
        entries += _dense(f"{prefix}.blocks.{i}.block.2", (*path, "blocks", "fc2"), i)
        entries += _norm(f"{prefix}.layernorms.{i}", (*path, "blocks", "norm"), i)
    return entries


def _entries(config: TokenizerConfig) -> list[_Entry]:
    """Every ml-4m state-dict entry of a config and where it goes in our variables."""
    c = config
    params, buffers = ("params",), ("buffers",)
    entries = []
    if c.n_labels is not None:
        entries.append(_Entry("cls_emb.weight", (*params, "cls_emb", "embedding")))
    enc = (*params, "encoder")
    if c.encoder.type == "vit":
        entries.append(_Entry("encoder.pos_emb", (*buffers, "encoder", "pos_emb"), _POS_EMB))
        entries += _dense("encoder.proj", (*enc, "patch_embed"),
                          layout=_patch_embed(c.patch_size if c.patch_proj else 1, c.n_channels))
        entries += _vit_blocks("encoder", enc, c.encoder.depth)
        if c.post_mlp:
            entries += _post_mlp("encoder", enc)
    else:
        entries += _mlp("encoder", enc, c.encoder.depth)
    entries += _dense("quant_proj", (*params, "quant_proj"), layout=_CONV_1X1)
    if c.quant_type == "memcodes":
        entries += [_Entry("quantize.codes", (*params, "quantizer", "codes")),
                    _Entry("quantize.to_k.weight", (*params, "quantizer", "to_k")),
                    _Entry("quantize.to_v.weight", (*params, "quantizer", "to_v"))]
    else:
        entries += [_Entry("quantize._codebook.embed", (*buffers, "quantizer", "embed")),
                    _Entry("quantize._codebook.cluster_size", (*buffers, "quantizer", "cluster_size"))]
        if c.num_codebooks > 1:
            entries += _dense("quantize.project_in", (*params, "quantizer", "project_in"))
            entries += _dense("quantize.project_out", (*params, "quantizer", "project_out"))
    if c.decoder is None:
        return entries
    entries += _dense("post_quant_proj", (*params, "post_quant_proj"), layout=_CONV_1X1)
    dec = (*params, "decoder")
    if c.decoder.type == "vit":
        patch = c.dec_patch_size if c.patch_proj else 1
        entries.append(_Entry("decoder.pos_emb", (*buffers, "decoder", "pos_emb"), _POS_EMB))
        entries += _vit_blocks("decoder", dec, c.decoder.depth)
        if c.post_mlp:
            entries += _post_mlp("decoder", dec)
        entries += [_Entry("decoder.out_proj.weight", (*dec, "out_proj", "kernel"),
                           _out_proj_kernel(patch, c.out_channels)),
                    _Entry("decoder.out_proj.bias", (*dec, "out_proj", "bias"),
                           _out_proj_bias(patch, c.out_channels))]
        if c.out_conv:
            conv = (*dec, "out_conv")
            for j in range(2):
                key = f"decoder.out_conv.{j}"
                entries += _dense(f"{key}.dwconv", (*conv, "dwconv"), j, _DEPTHWISE)
                entries += _norm(f"{key}.norm", (*conv, "norm"), j)
                entries += _dense(f"{key}.pwconv1", (*conv, "pwconv1"), j)
                entries += _dense(f"{key}.pwconv2", (*conv, "pwconv2"), j)
                entries.append(_Entry(f"{key}.gamma", (*conv, "gamma"), _SAME, j))
    else:
        entries += _mlp("decoder", dec, c.decoder.depth)
    return entries


def _optional_keys(config: TokenizerConfig) -> set[str]:
    """Bookkeeping tensors ml-4m saves that we do not keep (k-means flag, Euclidean EMA sums)."""
    if config.quant_type != "lucid":
        return set()
    return {"quantize._codebook.initted", "quantize._codebook.embed_avg"}


def _get(tree, path):
    for part in path:
        tree = tree[part]
    return tree


def _set(tree, path, value):
    for part in path[:-1]:
        tree = tree.setdefault(part, {})
    tree[path[-1]] = value


def _expected_torch_shapes(config: TokenizerConfig, entries: list[_Entry]) -> dict[str, tuple[int, ...]]:
    spec = VQVAE(config).spec()
    shapes = {}
    for entry in entries:
        shape = _get(spec, entry.path).shape
        ours = jax.ShapeDtypeStruct(shape if entry.layer is None else shape[1:], np.float32)
        shapes[entry.key] = tuple(jax.eval_shape(entry.layout.to_torch, ours).shape)
    return shapes


# ----------------------------------------------------------------------------- state dicts

def state_dict_to_variables(state_dict: Mapping[str, np.ndarray], config: TokenizerConfig,
                            source: str = "state dict") -> dict:
    """Our `{'params', 'buffers'}` from an ml-4m state dict, with the key and shape checks.

    With an encoder-only config (`decoder=None`), decoder and post_quant_proj keys are dropped.
    """
    entries = _entries(config)
    expected = _expected_torch_shapes(config, entries)
    optional = _optional_keys(config)
    missing = [key for key in expected if key not in state_dict]
    if missing:
        raise CheckpointError(f"{source}: missing key(s) {', '.join(missing)} that the config requires")
    droppable = ("decoder.", "post_quant_proj.") if config.decoder is None else ()
    unexpected = [key for key in state_dict
                  if key not in expected and key not in optional and not key.startswith(droppable)]
    if unexpected:
        raise CheckpointError(f"{source}: unexpected key(s) {', '.join(unexpected)} that the config does not "
                              "have (does the checkpoint match its config?)")
    for key, shape in expected.items():
        if tuple(state_dict[key].shape) != shape:
            raise CheckpointError(f"{source}: key {key!r} has shape {tuple(state_dict[key].shape)} in the "
                                  f"checkpoint, but the config implies {shape}")
    stacked: dict[tuple, dict[int, np.ndarray]] = {}
    variables: dict = {"params": {}, "buffers": {}}
    for entry in entries:
        array = entry.layout.to_ours(np.asarray(state_dict[entry.key], np.float32))
        if entry.layer is None:
            _set(variables, entry.path, array)
        else:
            stacked.setdefault(entry.path, {})[entry.layer] = array
    for path, layers in stacked.items():
        _set(variables, path, np.stack([layers[i] for i in range(len(layers))]))
    return variables


def variables_to_state_dict(variables: dict, config: TokenizerConfig) -> dict[str, np.ndarray]:
    """ml-4m's state dict (float32 numpy) of our variables (inverse of state_dict_to_variables)."""
    state_dict = {}
    for entry in _entries(config):
        array = np.asarray(_get(variables, entry.path), np.float32)
        if entry.layer is not None:
            array = array[entry.layer]
        state_dict[entry.key] = np.ascontiguousarray(entry.layout.to_torch(array))
    if config.quant_type == "lucid":
        state_dict["quantize._codebook.initted"] = np.ones((1,), np.float32)
    return state_dict


# ----------------------------------------------------------------------------- files

def _weights_path(path: str | os.PathLike) -> pathlib.Path:
    path = pathlib.Path(path)
    return path / WEIGHTS_FILE if path.is_dir() else path


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, raw string metadata) of a safetensors file; errors name the file."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    try:
        tensors = safetensors.numpy.load_file(str(path))
        with safetensors.safe_open(str(path), framework="numpy") as f:
            metadata = f.metadata() or {}
    except Exception as e:  # the library raises several types for a corrupt file
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    return tensors, metadata


def load(path: str | os.PathLike, *, modality: str | None = None, encoder_only: bool = False,
         config: Mapping[str, Any] | None = None,
         vit_presets: Mapping[str, Mapping[str, Any]] | None = None) -> tuple[VQVAE, dict]:
    """Loads an ml-4m tokenizer (a directory with model.safetensors [+ config.json], or the file).

    The ml-4m config comes from `config` if given, else config.json beside the weights, else the
    safetensors metadata. Returns (tokenizer, variables); variables are numpy arrays (put them on
    devices with jax.device_put and the sharding you want).
    """
    weights = _weights_path(path)
    tensors, metadata = read_safetensors(weights)
    if config is None:
        config_file = weights.parent / CONFIG_FILE
        if config_file.is_file():
            try:
                config = json.loads(config_file.read_text())
            except json.JSONDecodeError as e:
                raise CheckpointError(f"{config_file}: not valid JSON ({e})") from e
        elif metadata:
            config = parse_metadata(metadata)
        else:
            raise CheckpointError(f"{weights}: no config.json beside it and no config in its metadata")
    try:
        tok_config = config_from_ml4m(config, modality=modality, encoder_only=encoder_only,
                                      vit_presets=vit_presets)
    except ConfigError as e:
        raise ConfigError(f"{weights}: {e}") from None
    return VQVAE(tok_config), state_dict_to_variables(tensors, tok_config, source=str(weights))


def save(directory: str | os.PathLike, tokenizer: VQVAE, variables: dict) -> pathlib.Path:
    """Writes `model.safetensors` (config in its metadata, as ml-4m's `save_safetensors`) and
    `config.json` into `directory`, each atomically. Returns the directory."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ml4m_config = config_to_ml4m(tokenizer.config)
    state_dict = variables_to_state_dict(variables, tokenizer.config)
    write_atomic(directory / WEIGHTS_FILE, safetensors.numpy.save(
        state_dict, metadata={k: str(v) for k, v in ml4m_config.items()}))
    config_json = json.dumps(ml4m_config, indent=2, sort_keys=True) + "\n"
    write_atomic(directory / CONFIG_FILE, config_json.encode())
    return directory
