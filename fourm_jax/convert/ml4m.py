"""ml-4m (PyTorch) <-> fourm_jax mapping: config.json and every state-dict entry, both directions.

One table (`entries`) lists ml-4m's state dict in its own order: key, torch shape, and where the
tensor lives in our model (variable path, layer) with the transform between the two layouts:

* `linear`: torch Linear weight (out, in) <-> our kernel (in..., out...) (transpose + reshape;
  fused qkv / kv keep ml-4m's [3][heads][head_dim] column order, so the reshape is exact);
* `reshape`: same values, our shape drops ml-4m's leading 1s ((1, 1, D) -> (D,), (1, L, D) -> (L, D));
* `zeros`: ml-4m buffers with no counterpart here (LayerNorm biases of no-bias variants), zeros;
* a second key pointing at an already-filled variable is a tied or shared tensor (mod_emb shared
  by encoder and decoder, tied output heads): the two copies must be identical.

Both layer layouts are handled: unscanned (`encoder/blocks/3/...`) and scanned (`encoder/blocks/...`
with a leading layer axis).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fourm_jax import modalities
from fourm_jax.convert.safetensors_io import ArraySource
from fourm_jax.modalities import Kind, PosEmb
from fourm_jax.model.config import ConfigError, ModelConfig
from fourm_jax.model.fourm import FourM, abstract_fourm

# ml-4m's `act_layer` names (torch.nn classes) <-> ours.
_ACTIVATIONS = {"GELU": "gelu", "SiLU": "silu"}
# config.json keys that select a FourM constructor argument with the same meaning here.
_SAME_NAME = ("encoder_depth", "decoder_depth", "dim", "num_heads", "mlp_ratio", "qkv_bias", "proj_bias",
              "mlp_bias", "norm_bias", "gated_mlp", "qk_norm", "image_size", "patch_size",
              "decoder_causal_mask", "decoder_sep_mask", "num_register_tokens", "share_modality_embeddings")
# Accepted but irrelevant for the weights and the forward pass (training-time settings).
_IGNORED = ("drop_path_rate_encoder", "drop_path_rate_decoder", "shared_drop_path", "use_act_checkpoint")
# FourM's defaults, for keys the release configs leave out.
_FOURM_DEFAULTS = dict(qk_norm=False, share_modality_embeddings=True, decoder_causal_mask=False,
                       decoder_sep_mask=True, num_register_tokens=0)


class ConversionError(ValueError):
    """A checkpoint that does not match the model it should describe; the message names the key."""


def config_from_ml4m(ml4m_config: Mapping[str, Any], **overrides) -> ModelConfig:
    """ModelConfig from ml-4m's config.json (FM wrapper format). Output modalities without a decoder
    embedding (e.g. t5_caption in 4M-21's domains_out) are dropped, as ml-4m's FM skips them."""
    config = dict(ml4m_config)
    known = set(_SAME_NAME) | set(_IGNORED) | {"domains_in", "domains_out", "act_layer"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConversionError(f"ml-4m config: unknown key(s) {', '.join(unknown)}")
    for field in ("domains_in", "domains_out", "act_layer", "dim", "encoder_depth", "decoder_depth",
                  "num_heads"):
        if field not in config:
            raise ConversionError(f"ml-4m config: missing key {field!r}")
    for field in ("domains_in", "domains_out"):
        for name in config[field]:
            if not modalities.is_registered(name):
                raise ConversionError(f"ml-4m config: {field} lists modality {name!r}, which the registry "
                                      "does not know (fourm_jax.modalities.register it first)")
    if config["act_layer"] not in _ACTIVATIONS:
        raise ConversionError(f"ml-4m config: act_layer {config['act_layer']!r} is not one of "
                              f"{list(_ACTIVATIONS)}")
    values = {k: config[k] for k in _SAME_NAME if k in config}
    values["act"] = _ACTIVATIONS[config["act_layer"]]
    values["domains_in"] = tuple(m for m in config["domains_in"] if modalities.get(m).encoder)
    values["domains_out"] = tuple(m for m in config["domains_out"] if modalities.get(m).decoder)
    try:
        return ModelConfig(**(values | overrides))
    except ConfigError as e:
        raise ConversionError(f"ml-4m config: {e}") from None


def config_to_ml4m(config: ModelConfig) -> dict[str, Any]:
    """ml-4m's release config.json for a model (FourM defaults are written only when changed)."""
    if config.norm_eps != 1e-6:
        raise ConversionError(f"model.norm_eps={config.norm_eps}: ml-4m always uses 1e-6")
    out = dict(domains_in=list(config.domains_in), domains_out=list(config.domains_out),
               encoder_depth=config.encoder_depth, decoder_depth=config.decoder_depth, dim=config.dim,
               num_heads=config.num_heads, mlp_ratio=config.mlp_ratio, qkv_bias=config.qkv_bias,
               proj_bias=config.proj_bias, mlp_bias=config.mlp_bias, norm_bias=config.norm_bias,
               act_layer={v: k for k, v in _ACTIVATIONS.items()}[config.act], gated_mlp=config.gated_mlp)
    if float(out["mlp_ratio"]).is_integer():
        out["mlp_ratio"] = int(out["mlp_ratio"])
    for key, default in _FOURM_DEFAULTS.items():
        if getattr(config, key) != default:
            out[key] = getattr(config, key)
    out.update(image_size=config.image_size, patch_size=config.patch_size)
    return out


@dataclasses.dataclass(frozen=True)
class Entry:
    """One ml-4m state-dict entry. path/layer locate our variable (None for `zeros`)."""

    key: str
    torch_shape: tuple[int, ...]
    kind: str  # "linear" | "reshape" | "zeros"
    path: tuple[str | int, ...] | None = None
    layer: int | None = None


def _linear(key, path, module, layer=None) -> list[Entry]:
    """Entries of one of our Dense modules: weight (and bias if it has one)."""
    out_features, in_features = math.prod(module.out_shape), math.prod(module.in_shape)
    entries = [Entry(f"{key}.weight", (out_features, in_features), "linear", path + ("kernel",), layer)]
    if module.bias is not None:
        entries.append(Entry(f"{key}.bias", (out_features,), "reshape", path + ("bias",), layer))
    return entries


def _norm(key, path, module, dim, layer=None) -> list[Entry]:
    bias = (Entry(f"{key}.bias", (dim,), "reshape", path + ("bias",), layer) if module.bias is not None
            else Entry(f"{key}.bias", (dim,), "zeros"))
    return [Entry(f"{key}.weight", (dim,), "reshape", path + ("scale",), layer), bias]


def _attention(key, path, attn, dim, head_dim, layer) -> list[Entry]:
    entries = []
    if attn.cross:
        entries += _linear(f"{key}.q", path + ("q",), attn.q, layer)
        entries += _linear(f"{key}.kv", path + ("kv",), attn.kv, layer)
    else:
        entries += _linear(f"{key}.qkv", path + ("qkv",), attn.qkv, layer)
    entries += _linear(f"{key}.proj", path + ("proj",), attn.proj, layer)
    if attn.q_norm is not None:
        entries += _norm(f"{key}.q_norm", path + ("q_norm",), attn.q_norm, head_dim, layer)
        entries += _norm(f"{key}.k_norm", path + ("k_norm",), attn.k_norm, head_dim, layer)
    return entries


def _mlp(key, path, mlp, layer) -> list[Entry]:
    entries = _linear(f"{key}.fc1", path + ("fc1",), mlp.fc1, layer)
    entries += _linear(f"{key}.fc2", path + ("fc2",), mlp.fc2, layer)
    if mlp.fc3 is not None:
        entries += _linear(f"{key}.fc3", path + ("fc3",), mlp.fc3, layer)
    return entries


def _block(model, stack: str, i: int):
    blocks = getattr(model, stack).blocks
    if model.config.scan_layers:
        return blocks, (stack, "blocks"), i
    return blocks[i], (stack, "blocks", i), None


def entries(model) -> list[Entry]:
    """ml-4m's state dict of `model` (a FourM, abstract or concrete), in ml-4m's key order."""
    config: ModelConfig = model.config
    dim, head_dim = config.dim, config.head_dim
    out: list[Entry] = [Entry("mask_token", (1, 1, dim), "reshape", ("mask_token",))]
    if config.num_register_tokens:
        out.append(Entry("register_tokens", (1, config.num_register_tokens, dim), "reshape",
                         ("register_tokens",)))
    for side in ("encoder_embeddings", "decoder_embeddings"):
        for name, module in getattr(model, side).items():
            modality = modalities.get(name)
            key, path = f"{side}.{name}", (side, name)
            pos = Entry(f"{key}.pos_emb", (1,) + tuple(module.pos_emb.shape), "reshape", path + ("pos_emb",))
            mod = Entry(f"{key}.mod_emb", (1, 1, dim), "reshape", path + ("mod_emb",))
            # ml-4m lists a module's own parameters before its buffers.
            out += [pos, mod] if modality.pos_emb is PosEmb.LEARNED else [mod, pos]
            if side == "decoder_embeddings":
                out.append(Entry(f"{key}.token_emb.weight", tuple(module.token_emb.shape), "reshape",
                                 path + ("token_emb",)))
                if module.to_logits is None:  # tied head: the second copy is token_emb itself
                    out.append(Entry(f"{key}.to_logits.weight", tuple(module.token_emb.shape), "reshape",
                                     path + ("token_emb",)))
                else:
                    out += _linear(f"{key}.to_logits", path + ("to_logits",), module.to_logits)
            elif modality.kind is Kind.IMAGE_PIXELS:
                out += _linear(f"{key}.proj", path + ("proj",), module.proj)
            elif modality.kind is Kind.SEQUENCE_EMBEDDING:
                out += _linear(f"{key}.emb_proj", path + ("emb_proj",), module.emb_proj)
            else:
                out.append(Entry(f"{key}.token_emb.weight", tuple(module.token_emb.shape), "reshape",
                                 path + ("token_emb",)))
    for i in range(config.encoder_depth):
        block, path, layer = _block(model, "encoder", i)
        key = f"encoder.{i}"
        out += _norm(f"{key}.norm1", path + ("norm1",), block.norm1, dim, layer)
        out += _attention(f"{key}.attn", path + ("attn",), block.attn, dim, head_dim, layer)
        out += _norm(f"{key}.norm2", path + ("norm2",), block.norm2, dim, layer)
        out += _mlp(f"{key}.mlp", path + ("mlp",), block.mlp, layer)
    out += _norm("encoder_norm", ("encoder_norm",), model.encoder_norm, dim)
    out += _linear("decoder_proj_context", ("decoder_proj_context",), model.decoder_proj_context)
    for i in range(config.decoder_depth):
        block, path, layer = _block(model, "decoder", i)
        key = f"decoder.{i}"
        out += _norm(f"{key}.norm1", path + ("norm1",), block.norm1, dim, layer)
        out += _attention(f"{key}.self_attn", path + ("self_attn",), block.self_attn, dim, head_dim, layer)
        out += _attention(f"{key}.cross_attn", path + ("cross_attn",), block.cross_attn, dim, head_dim, layer)
        for norm in ("query_norm", "context_norm", "norm2"):
            out += _norm(f"{key}.{norm}", path + (norm,), getattr(block, norm), dim, layer)
        out += _mlp(f"{key}.mlp", path + ("mlp",), block.mlp, layer)
    out += _norm("decoder_norm", ("decoder_norm",), model.decoder_norm, dim)
    return out


def variable_at(model, path) -> nnx.Variable:
    node = model
    for part in path:
        node = node[part] if isinstance(part, int) or isinstance(node, nnx.Dict) else getattr(node, part)
    return node


def to_ours(entry: Entry, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """ml-4m tensor -> our layout (`shape` = our variable's per-layer shape)."""
    if entry.kind == "linear":
        return np.ascontiguousarray(array.T).reshape(shape)
    return array.reshape(shape)


def to_torch(entry: Entry, array: np.ndarray) -> np.ndarray:
    """Our per-layer array -> ml-4m's tensor."""
    if entry.kind == "linear":
        out_features, in_features = entry.torch_shape
        return np.ascontiguousarray(array.reshape(in_features, out_features).T)
    return array.reshape(entry.torch_shape)


def fill_from(model, source) -> None:
    """Sets every variable of `model` (abstract is fine) from a tensor source (TensorSource or
    ArraySource) in ml-4m's layout, one tensor at a time. Raises ConversionError naming the key on
    a missing or unexpected key, a shape or dtype mismatch, nonzero values where ml-4m keeps zero
    buffers, or tied/shared copies that differ. Variables are left as numpy float32 arrays."""
    table = entries(model)
    expected = {e.key for e in table}
    available = set(source.keys())
    missing, unexpected = sorted(expected - available), sorted(available - expected)
    if missing or unexpected:
        more = lambda keys: " ..." if len(keys) > 8 else ""
        raise ConversionError(f"{source.path}: missing key(s) {missing[:8]}{more(missing)}; "
                              f"unexpected key(s) {unexpected[:8]}{more(unexpected)}")
    filled: dict[int, tuple[str, set]] = {}  # variable id -> (first key, layers written)
    for entry in table:
        shape = source.shape(entry.key)
        if shape != entry.torch_shape:
            raise ConversionError(f"{source.path}: {entry.key} has shape {shape}, the model expects "
                                  f"{entry.torch_shape}")
        if source.dtype(entry.key) != "F32":
            raise ConversionError(f"{source.path}: {entry.key} has dtype {source.dtype(entry.key)}, "
                                  "expected F32")
        array = source.get(entry.key)
        if entry.kind == "zeros":
            if np.any(array != 0):
                raise ConversionError(f"{source.path}: {entry.key} must be all zeros (the model has no such "
                                      "parameter: norm_bias is False)")
            continue
        variable = variable_at(model, entry.path)
        if id(variable) not in filled:
            variable.set_value(np.zeros(variable.shape, np.float32))
            filled[id(variable)] = (entry.key, set())
        first_key, written = filled[id(variable)]
        target = variable.get_value()
        slot = () if entry.layer is None else (entry.layer,)
        value = to_ours(entry, array, target[slot].shape)
        if slot in written:
            if not np.array_equal(target[slot], value):
                raise ConversionError(f"{source.path}: {entry.key} must equal {first_key} (the model shares "
                                      "this tensor) but differs")
        else:
            target[slot] = value
            written.add(slot)
    for path, variable in nnx.to_flat_state(nnx.state(model)):
        layers = variable.shape[0] if _is_stacked(path) else 1
        if len(filled.get(id(variable), ("", ()))[1]) != layers:
            raise ConversionError(f"{source.path}: no ml-4m key fills {'/'.join(map(str, path))}")


def _is_stacked(path) -> bool:
    return len(path) > 2 and path[0] in ("encoder", "decoder") and path[1] == "blocks" and isinstance(
        path[2], str)


def export_tensors(model) -> Iterator[tuple[str, tuple[int, ...], np.dtype, Any]]:
    """(key, shape, dtype, produce) for every ml-4m state-dict entry of `model`, in ml-4m's order;
    produce() builds one tensor (numpy float32) when called."""
    for entry in entries(model):
        def produce(entry=entry):
            if entry.kind == "zeros":
                return np.zeros(entry.torch_shape, np.float32)
            value = np.asarray(variable_at(model, entry.path).get_value(), dtype=np.float32)
            if entry.layer is not None:
                value = value[entry.layer]
            return to_torch(entry, value)
        yield entry.key, entry.torch_shape, np.dtype(np.float32), produce


def model_from_source(source, config: ModelConfig) -> FourM:
    """A FourM built from `config` with every tensor from an ml-4m-layout source (jax arrays)."""
    model = abstract_fourm(config)
    fill_from(model, source)
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, state))


def state_dict(model: FourM) -> dict[str, np.ndarray]:
    """ml-4m's state dict of a model, in memory (numpy float32, ml-4m's key order)."""
    return {key: produce() for key, _, _, produce in export_tensors(model)}


def relayout(model: FourM, config: ModelConfig) -> FourM:
    """The parameters of `model` in a model built from `config` (e.g. scanned <-> unscanned layers)."""
    return model_from_source(ArraySource(state_dict(model)), config)
