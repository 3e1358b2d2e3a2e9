"""The sampler's state: ml-4m's `mod_dict`, on the host in numpy.

`mod_dict[domain]` holds `tensor` (image tokens (B, N) int32, sequence ids (B, L) int32, pixels
(B, C, H, W) float32, sequence embeddings (B, L, E) float32), `input_mask` and `target_mask` (B, N)
bool (True = not an input / not a target) and optionally `decoder_attention_mask`. The helpers
below build it as ml-4m's do (same names, same quirks); batch sizes and devices are numpy's
business here, so ml-4m's `modality_info` and `device` arguments are dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

import numpy as np

from fourm_jax import modalities
from fourm_jax.modalities import Kind
from fourm_jax.text import layout

ModDict = MutableMapping[str, dict[str, np.ndarray]]
KEYS = ("tensor", "input_mask", "target_mask", "decoder_attention_mask")
S_1, S_2 = layout.sentinel_id(1), layout.sentinel_id(2)


def num_positions(domain: str, tensor: np.ndarray) -> int:
    """Token positions of a domain's tensor (pixels: its patches)."""
    modality = modalities.get(domain)
    if modality.kind is Kind.IMAGE_PIXELS:
        return (tensor.shape[-2] // modality.patch_size) * (tensor.shape[-1] // modality.patch_size)
    if modality.kind is Kind.IMAGE_TOKENS:
        return int(np.prod(tensor.shape[1:]))
    return tensor.shape[1]


def init_empty_target_modality(mod_dict: ModDict, domain: str, batch_size: int, num_tokens: int) -> ModDict:
    """Adds `domain` as a target with nothing known: image tokens all targets; a sequence of
    max(num_tokens, 2) slots `[S_1] [S_1] 0 .. 0 [S_2]` whose first token is the only input
    (the encoder sees "everything masked") and the rest the targets."""
    kind = modalities.get(domain).kind
    b, n = batch_size, num_tokens
    if kind is Kind.IMAGE_TOKENS:
        mod_dict[domain] = dict(tensor=np.zeros((b, n), np.int32), input_mask=np.ones((b, n), bool),
                                target_mask=np.zeros((b, n), bool),
                                decoder_attention_mask=np.zeros((b, n), bool))
    elif kind is Kind.SEQUENCE:
        n = max(n, 2)
        tensor = np.zeros((b, n), np.int32)
        tensor[:, [0, 1]] = S_1
        tensor[:, -1] = S_2
        input_mask = np.ones((b, n), bool)
        input_mask[:, 0] = False
        mod_dict[domain] = dict(tensor=tensor, input_mask=input_mask, target_mask=~input_mask,
                                decoder_attention_mask=input_mask.copy())
    else:
        raise ValueError(f"{domain!r} ({kind.value}) cannot be generated: only image tokens and "
                         "sequences are 4M targets")
    return mod_dict


def init_full_input_modality(mod_dict: ModDict, domain: str, eos_id: int = layout.EOS_ID) -> ModDict:
    """Marks `domain` as a fully given input. Sequences are visible up to the first [EOS] (its
    column taken from the first row that has one, as ml-4m); with no [EOS] at all, column 0
    becomes [EOS] and only it is visible (ml-4m's behaviour)."""
    d = mod_dict[domain]
    modality = modalities.get(domain)
    tensor = d["tensor"]
    shape = (tensor.shape[0], num_positions(domain, tensor))
    d.setdefault("input_mask", np.zeros(shape, bool))
    d.setdefault("target_mask", np.ones(shape, bool))
    d.setdefault("decoder_attention_mask", np.zeros(shape, bool))
    if modality.kind in (Kind.IMAGE_PIXELS, Kind.IMAGE_TOKENS):
        d["input_mask"] = np.zeros(shape, bool)
        d["target_mask"] = np.ones(shape, bool)
    elif modality.kind is Kind.SEQUENCE:
        rows, cols = np.nonzero(tensor == eos_id)
        if len(cols):
            eos_index = int(cols[0])
        else:
            d["tensor"] = tensor = tensor.copy()
            tensor[:, 0] = eos_id
            eos_index = 0
        d["input_mask"] = np.broadcast_to(np.arange(shape[1]) > eos_index, shape).copy()
        d["target_mask"] = np.ones(shape, bool)
    else:
        if "mask_valid" not in d:
            raise ValueError(f"{domain}: a sequence embedding input needs `mask_valid` (B, L)")
        d["input_mask"] = ~np.asarray(d["mask_valid"], bool)
        d["target_mask"] = np.ones(shape, bool)
        d["decoder_attention_mask"] = np.zeros(shape, bool)
    return mod_dict


def custom_text(mod_dict: ModDict, input_text: str, eos_token: str, key: str, text_tokenizer,
                target_max_len: int = 50, start_token: str = "[S_1]") -> ModDict:
    """A one-row sequence: the tokens of `input_text` as input, then `start_token`, padding and
    `eos_token` as targets (target_max_len slots). Sentinels written in the text ("a red [S_1]")
    mark where the model may add content; autoregressive decoding of this target stops at
    eos_token."""
    ids = {}
    for token in (start_token, "[PAD]", eos_token):
        ids[token] = text_tokenizer.token_to_id(token)
        if ids[token] is None:
            raise ValueError(f"custom_text: {token!r} is not a token of {text_tokenizer.path}")
    given = np.asarray(text_tokenizer.encode(input_text), np.int32)
    target = np.array([ids[start_token]] + [ids["[PAD]"]] * (target_max_len - 2) + [ids[eos_token]], np.int32)
    tensor = np.concatenate([given, target])[None]
    input_mask = np.concatenate([np.zeros(len(given), bool), np.ones(len(target), bool)])[None]
    mod_dict[key] = dict(tensor=tensor, input_mask=input_mask, target_mask=~input_mask,
                         decoder_attention_mask=np.zeros(tensor.shape, bool))
    return mod_dict


def expand_to_batch(mod_dict: ModDict, batch_size: int) -> ModDict:
    """Repeats batch-of-one arrays to batch_size rows; other batch sizes must already match."""
    for domain, d in mod_dict.items():
        for key, value in d.items():
            if key not in KEYS + ("mask_valid",):
                continue
            if value.shape[0] == 1:
                d[key] = np.repeat(value, batch_size, axis=0)
            elif value.shape[0] != batch_size:
                raise ValueError(f"{domain}/{key}: batch size {value.shape[0]}, expected 1 or {batch_size}")
    return mod_dict


def copy(mod_dict: Mapping[str, Mapping[str, np.ndarray]]) -> dict[str, dict[str, np.ndarray]]:
    """A deep copy as numpy arrays (jax arrays are brought to the host)."""
    return {domain: {k: np.array(v) for k, v in d.items()} for domain, d in mod_dict.items()}
