"""Random batches in ml-4m's layout, for benchmarks, compilation and tests (not for training).

Each sample gets exactly `num_input_tokens` input and `num_target_tokens` target tokens, spread
over the given modalities at random; targets never overlap inputs. Sequence modalities hold
2 * (max_tokens + 1) ids laid out as ml-4m's span-masked text: input tokens at the front, target
tokens a contiguous run from the middle, with per-token (causal) decoder attention counts; image
targets carry one count at their first target position. `text_tokens` caps how many tokens of a
sequence modality exist (a caption's length); by default all max_tokens do.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fourm_jax import modalities
from fourm_jax.modalities import Kind


def _length(modality) -> int:
    if modality.is_image:
        return modality.grid_size**2
    if modality.kind is Kind.SEQUENCE:
        return 2 * (modality.max_tokens + 1)
    return modality.max_tokens


def _tensor(modality, batch_size: int, rng: np.random.Generator) -> np.ndarray:
    if modality.kind is Kind.IMAGE_PIXELS:
        size = modality.input_size
        return rng.standard_normal((batch_size, modality.num_channels, size, size)).astype(np.float32)
    if modality.kind is Kind.IMAGE_TOKENS:
        grid = modality.grid_size
        return rng.integers(0, modality.vocab_size, (batch_size, grid, grid)).astype(np.int32)
    if modality.kind is Kind.SEQUENCE:
        return rng.integers(1, modality.vocab_size, (batch_size, _length(modality))).astype(np.int32)
    return rng.standard_normal((batch_size, modality.max_tokens, modality.embedding_dim)).astype(np.float32)


def example_batch(inputs: Sequence[str], outputs: Sequence[str], batch_size: int, num_input_tokens: int,
                  num_target_tokens: int, seed: int = 0,
                  text_tokens: int | None = None) -> dict[str, dict[str, np.ndarray]]:
    """{modality: {tensor, input_mask, target_mask, decoder_attention_mask}} for inputs | outputs."""
    rng = np.random.default_rng(seed)
    names = sorted(set(inputs) | set(outputs))
    mods = {name: modalities.get(name) for name in names}
    lengths = {name: _length(m) for name, m in mods.items()}
    batch = {name: dict(tensor=_tensor(m, batch_size, rng),
                        input_mask=np.ones((batch_size, lengths[name]), bool),
                        target_mask=np.ones((batch_size, lengths[name]), bool),
                        decoder_attention_mask=np.zeros((batch_size, lengths[name]), np.int32))
             for name, m in mods.items()}
    offsets = np.cumsum([0] + [lengths[n] for n in names])
    def eligible(name, role):
        flags = np.full(lengths[name], role)
        if mods[name].kind is Kind.SEQUENCE:
            flags[min(text_tokens or mods[name].max_tokens, mods[name].max_tokens):] = False
        return flags

    is_input = np.concatenate([eligible(n, n in inputs) for n in names])
    is_output = np.concatenate([eligible(n, n in outputs and mods[n].decoder) for n in names])
    for b in range(batch_size):
        chosen_in = rng.choice(np.flatnonzero(is_input), min(num_input_tokens, is_input.sum()), replace=False)
        free = is_output.copy()
        free[chosen_in] = False
        chosen_out = rng.choice(np.flatnonzero(free), min(num_target_tokens, free.sum()), replace=False)
        for i, name in enumerate(names):
            d, lo, hi = batch[name], offsets[i], offsets[i + 1]
            inputs_here = chosen_in[(chosen_in >= lo) & (chosen_in < hi)] - lo
            targets = np.sort(chosen_out[(chosen_out >= lo) & (chosen_out < hi)] - lo)
            if mods[name].kind is Kind.SEQUENCE:
                inputs_here = np.arange(len(inputs_here))
                targets = lengths[name] // 2 + np.arange(len(targets))
            d["input_mask"][b, inputs_here] = False
            d["target_mask"][b, targets] = False
            if len(targets) and mods[name].is_image:
                d["decoder_attention_mask"][b, targets[0]] = len(targets)
            elif len(targets):
                d["decoder_attention_mask"][b, targets] = 1
    return batch
