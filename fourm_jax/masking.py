"""4M's multimodal masking (ml-4m's UnifiedMasking) in numpy, seeded, per example or per batch.

Per example: pick a mixture component; draw per-modality input and target token budgets from that
component's Dirichlet distributions; give image modalities uniformly random disjoint input and
target token subsets of those sizes; give sequence modalities T5-style span corruption with
sentinels. Every modality comes out as fixed-shape arrays in ml-4m's layout:

    tensor                  image tokens int32 [N]; pixels passed through; sequences int32
                            [2 (max_tokens + 1)] (input at 0, target at the input budget, PAD
                            elsewhere); sequence embeddings float32 [max_tokens, D]
    input_mask, target_mask bool, same length as the token axis; True = NOT used
    decoder_attention_mask  int32; images: the number of targets at the first target slot;
                            sequences: 1 on every target slot

Distributions match ml-4m (tested against its own draws in tests/fixtures/masking); its RNG
streams are not reproduced. Everything is drawn from the numpy Generator passed in, so a draw is
a function of (examples, generator state). `mask_batch` masks several independent examples with
shared numpy calls; `Masker.__call__` is a batch of one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fourm_jax import modalities as modality_registry
from fourm_jax.modalities import Kind, Modality
from fourm_jax.text.layout import EOS_ID, FIRST_SENTINEL_ID, NUM_SENTINELS, SENTINEL_OFFSET

KEEP_SCHEMES = ("random", "all", "binary")
KEEP_PROB_DECAY = 0.9
ALPHA_MIN = 1e-9  # ml-4m clamps every alpha to this before building the Dirichlets
_FLOAT_MIN = float(np.finfo(np.float32).tiny)
_FLOAT_BELOW_ONE = float(np.nextafter(np.float32(1), np.float32(0)))
_SENTINEL_END = SENTINEL_OFFSET + NUM_SENTINELS
# Span-masking retries are evaluated a block per numpy call. Any block size gives the same
# distribution (each retry is an independent trial with its own keep probability); the first block
# is sized to reach the keep probability the budget needs, so one block usually suffices.
_MIN_BLOCK, _MAX_BLOCK = 8, 64
_DECAY_POWERS = KEEP_PROB_DECAY ** np.arange(1024)

Example = Mapping[str, Any]
MaskedModality = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True, eq=False)
class MaskingMixture:
    """A mixture of Dirichlet token-budget distributions over modalities (ml-4m's alphas files).

    modalities: the Dirichlet order. input_alphas / target_alphas: float [components, modalities].
    keep: per component, per modality, how a sequence modality's keep probability is drawn
    ('random': U(0,1), 'all': 1, 'binary': 0 or 1). weights: component sampling weights, any
    positive scale; None picks components uniformly.
    """

    modalities: tuple[str, ...]
    input_alphas: np.ndarray
    target_alphas: np.ndarray
    keep: tuple[tuple[str, ...], ...]
    weights: tuple[float, ...] | None = None

    def __post_init__(self):
        set_ = lambda field, value: object.__setattr__(self, field, value)
        set_("modalities", tuple(self.modalities))
        if len(set(self.modalities)) != len(self.modalities) or not self.modalities:
            raise ValueError(f"mixture modalities must be unique and non-empty, got {self.modalities}")
        if not self.keep or any(len(row) != len(self.modalities) for row in self.keep):
            raise ValueError(f"mixture keep: expected [components >= 1][{len(self.modalities)} modalities] "
                             f"schemes, got {self.keep!r}")
        shape = (len(self.keep), len(self.modalities))
        for field in ("input_alphas", "target_alphas"):
            alphas = np.asarray(getattr(self, field), np.float64)
            if alphas.shape != shape:
                raise ValueError(f"mixture {field}: expected shape [components, modalities] = {shape}, "
                                 f"got {alphas.shape}")
            bad = np.argwhere(~np.isfinite(alphas) | (alphas < 0))
            if len(bad):
                c, m = bad[0]
                raise ValueError(f"mixture {field}[{self.modalities[m]!r}][{c}] = {alphas[c, m]}: "
                                 "alphas must be finite and >= 0")
            alphas.flags.writeable = False
            set_(field, alphas)
        set_("keep", tuple(tuple(row) for row in self.keep))
        for c, row in enumerate(self.keep):
            for name, scheme in zip(self.modalities, row, strict=True):
                if scheme not in KEEP_SCHEMES:
                    raise ValueError(f"mixture keep[{name!r}][{c}] = {scheme!r}: expected one of "
                                     f"{KEEP_SCHEMES}")
        if self.weights is not None:
            weights = tuple(float(w) for w in self.weights)
            if len(weights) != self.num_components:
                raise ValueError(f"mixture sampling_weights: expected {self.num_components} weights "
                                 f"(one per component), got {len(weights)}")
            if any(not np.isfinite(w) or w < 0 for w in weights) or sum(weights) <= 0:
                raise ValueError(f"mixture sampling_weights {weights}: need finite weights >= 0 with a "
                                 "positive sum")
            set_("weights", weights)

    @property
    def num_components(self) -> int:
        return len(self.keep)

    @classmethod
    def from_config(cls, config) -> MaskingMixture:
        """Builds the mixture from a config with `alphas` ({modality: {input_alphas, target_alphas,
        keep (optional)}}, as in ml-4m's alphas files) and optional `sampling_weights`.

        Modalities are put in sorted order, which is the Dirichlet order ml-4m uses.
        """
        alphas = config["alphas"]
        names = sorted(alphas.keys())
        if not names:
            raise ValueError("mixture config: `alphas` names no modality")
        columns = {"input_alphas": [], "target_alphas": [], "keep": []}
        for name in names:
            entry = alphas[name]
            unknown = set(entry.keys()) - set(columns)
            if unknown:
                raise ValueError(f"mixture config alphas[{name!r}]: unknown fields {sorted(unknown)}")
            for field in ("input_alphas", "target_alphas"):
                if field not in entry:
                    raise ValueError(f"mixture config alphas[{name!r}] has no {field}")
                columns[field].append([float(a) for a in entry[field]])
            num_components = len(columns["input_alphas"][0])
            columns["keep"].append(tuple(entry.get("keep", None) or ["random"] * num_components))
            for field, column in columns.items():
                if len(column[-1]) != num_components:
                    raise ValueError(f"mixture config alphas[{name!r}].{field}: expected {num_components} "
                                     f"values (one per component, as for {names[0]!r}), got "
                                     f"{len(column[-1])}")
        weights = config.get("sampling_weights", None)
        return cls(modalities=tuple(names),
                   input_alphas=np.array(columns["input_alphas"]).T,
                   target_alphas=np.array(columns["target_alphas"]).T,
                   keep=tuple(zip(*columns["keep"], strict=True)),
                   weights=None if weights is None else tuple(weights))


def alphas_entry(input_alphas, target_alphas, keep=None) -> dict[str, list]:
    """One modality's entry of a mixture config: alphas (and keep schemes) per component."""
    entry = dict(input_alphas=[float(a) for a in input_alphas],
                 target_alphas=[float(a) for a in target_alphas])
    if keep is not None:
        entry["keep"] = list(keep)
    return entry


def mixture_config(name: str, alphas: Mapping[str, Mapping], sampling_weights, input_tokens: int,
                   target_tokens: int):
    """The ConfigDict that `Masker.from_config` reads (configs/mixtures/*.py build theirs with it).

    min_input_tokens / min_target_tokens stay None (fixed counts); set them to draw the counts
    uniformly from [min, max] per example, as ml-4m's min_*_tokens do.
    """
    import ml_collections

    config = ml_collections.ConfigDict()
    config.name = name
    config.alphas = ml_collections.ConfigDict({k: dict(v) for k, v in alphas.items()})
    config.sampling_weights = None if sampling_weights is None else list(sampling_weights)
    config.input_tokens = input_tokens
    config.target_tokens = target_tokens
    config.min_input_tokens = None
    config.min_target_tokens = None
    return config


def _token_range(value, field) -> tuple[int, int] | None:
    if value is None:
        return None
    low, high = (value, value) if isinstance(value, int) else tuple(value)
    if not 0 <= low <= high:
        raise ValueError(f"{field}: expected an int >= 0 or a range (min, max) with 0 <= min <= max, "
                         f"got {value!r}")
    return int(low), int(high)


class _Dirichlets:
    """One mixture component's input and target Dirichlets over the modalities, sampled together as
    gammas with one numpy call per distinct alpha (numpy is much faster with a scalar shape)."""

    def __init__(self, input_alphas: np.ndarray, target_alphas: np.ndarray):
        alphas = np.maximum(np.concatenate([input_alphas, target_alphas]), ALPHA_MIN)
        self.size = len(input_alphas)
        self.groups = [(value, np.flatnonzero(alphas == value)) for value in sorted(set(alphas.tolist()))]

    def gammas(self, rng: np.random.Generator, rows: int) -> np.ndarray:
        """float64 [rows, 2, M] (input, target). ATen clamps each draw to >= DBL_MIN; leaving
        underflowed draws at 0 changes nothing (same argmax, same float32 p after the FLT_MIN
        clamp) except in a draw that underflows entirely, which `budgets` handles."""
        if len(self.groups) == 1:
            return rng.standard_gamma(self.groups[0][0], size=(rows, 2, self.size))
        gammas = np.empty((rows, 2 * self.size))
        for alpha, slots in self.groups:
            gammas[:, slots] = rng.standard_gamma(alpha, size=(rows, len(slots)))
        return gammas.reshape(rows, 2, self.size)

    def budgets(self, rng: np.random.Generator, counts: np.ndarray) -> np.ndarray:
        """ml-4m's budgets int64 [rows, 2, M] for token counts [rows, 2] (input, target), before the
        max_tokens clamp: floor(p n) from one Dirichlet draw p, then each leftover token to the
        argmax of a fresh draw."""
        rows = len(counts)
        gammas = self.gammas(rng, rows)
        total = np.add.reduce(gammas, axis=2, keepdims=True)
        if not total.all():  # every draw underflowed: ATen's DBL_MIN clamp makes p uniform
            gammas[total[..., 0] == 0] = 1.0
            total = np.add.reduce(gammas, axis=2, keepdims=True)
        # ATen normalises in float64, then casts to float32 clamped to [FLT_MIN, 1 - 2**-24] (the
        # clamp below 1 is why a one-hot draw yields n - 1 tokens); the product p n is float32 too.
        p = (gammas / total).astype(np.float32)
        np.maximum(p, _FLOAT_MIN, out=p)
        np.minimum(p, _FLOAT_BELOW_ONE, out=p)
        budgets = (p * counts[:, :, None].astype(np.float32)).astype(np.int64)  # floored: p n >= 0
        leftover = counts - np.add.reduce(budgets, axis=2)
        extra = int(leftover.max())
        if extra > 0:
            # argmax of the float64 gammas == argmax of the clamped float32 sample: the clamps never
            # touch the largest entry (>= 1/M), and normalising preserves order.
            winners = self.gammas(rng, rows * extra).reshape(rows, extra, 2, self.size).argmax(axis=3)
            if rows == 1:  # what the general case below computes, in fewer numpy calls
                for half, count in enumerate(leftover[0].tolist()):
                    budgets[0, half] += np.bincount(winners[0, :count, half], minlength=self.size)
            else:
                used = np.arange(extra)[None, :, None] < leftover[:, None, :]  # [rows, extra, 2]
                slot = (np.arange(rows * 2).reshape(rows, 1, 2) * self.size + winners)[used]
                budgets += np.bincount(slot, minlength=rows * 2 * self.size).reshape(budgets.shape)
        return budgets


@dataclasses.dataclass(frozen=True, eq=False)
class _ImageGroup:
    """Image modalities with the same number of tokens, masked with one vectorised draw."""

    size: int  # tokens per modality
    positions: np.ndarray  # indices into the mixture's modality order
    names: tuple[str, ...]
    token_names: tuple[str, ...]  # the modalities whose tensor is a token grid (others: pixels)
    vocab_column: np.ndarray  # uint32 [len(token_names), 1, 1]


class Masker:
    """Masks examples: `masker(example, rng)` -> {modality: {tensor, input_mask, target_mask,
    decoder_attention_mask}}, or `masker.mask_batch(examples, rng)` -> the same with a leading
    batch axis (several times faster per example: numpy's per-call cost is shared).

    input_tokens / target_tokens: the encoder / decoder token budget per example, an int or an
    inclusive (min, max) range drawn uniformly per example; target_tokens=None gives image
    modalities every non-input token as target and sequences untruncated targets.
    modalities: Modality objects for names the registry lacks or that should be overridden.
    output_modalities: modalities to emit; those outside the mixture come out as fully masked
    placeholders (ml-4m's padding of a dataset to the union of all datasets' modalities).
    check_ids: reject token ids outside a modality's vocabulary.
    pixel_format: the layout of raw pixels in the examples ('float32_chw' as ml-4m, or
    'uint8_hwc'); pixels pass through unchecked, the format only shapes their placeholders.

    Example values: image tokens int [N]; pixels any array (passed through); sequences token ids
    without EOS, either int [L] (spans over tokens) or a list of chunks, each a list/array of ids
    (spans over whole chunks, ml-4m's metadata); sequence embeddings float [L, D]. Outputs may be
    read-only views (placeholders are broadcast); copying or stacking them makes them writable.
    """

    def __init__(self, mixture: MaskingMixture, input_tokens: int | tuple[int, int],
                 target_tokens: int | tuple[int, int] | None, *,
                 modalities: Mapping[str, Modality] | None = None,
                 output_modalities: Sequence[str] | None = None, check_ids: bool = True,
                 pixel_format: str = "float32_chw"):
        self.mixture = mixture
        self.input_range = _token_range(input_tokens, "input_tokens")
        self.target_range = _token_range(target_tokens, "target_tokens")
        self.check_ids = check_ids
        overrides = dict(modalities or {})
        resolve = lambda name: overrides[name] if name in overrides else modality_registry.get(name)
        self.output_modalities = tuple(output_modalities or mixture.modalities)
        missing = [name for name in mixture.modalities if name not in self.output_modalities]
        if missing:
            raise ValueError(f"output_modalities lacks mixture modalities {missing}")
        self.specs = {name: resolve(name) for name in self.output_modalities}
        for spec in self.specs.values():
            _check_maskable(spec)

        specs = [self.specs[name] for name in mixture.modalities]
        self._max_tokens = np.array([spec.max_tokens for spec in specs], np.int64)
        self._is_image = np.array([spec.is_image for spec in specs])
        self._dirichlets = [_Dirichlets(a_in, a_tg)
                            for a_in, a_tg in zip(mixture.input_alphas, mixture.target_alphas, strict=True)]
        self._cum_weights = np.cumsum(mixture.weights or [1.0] * mixture.num_components)
        self._image_groups = self._group_images(specs)
        self._sequences = [(i, spec) for i, spec in enumerate(specs) if not spec.is_image]
        if pixel_format not in PIXEL_FORMATS:
            raise ValueError(f"pixel_format must be one of {PIXEL_FORMATS}, got {pixel_format!r}")
        self.pixel_format = pixel_format
        self._placeholders = {name: placeholder(spec, pixel_format) for name, spec in self.specs.items()
                              if name not in mixture.modalities}
        self._sequence_slots = {spec.name: _SequenceSlots(2 * (spec.max_tokens + 1))
                                for _, spec in self._sequences if spec.kind is Kind.SEQUENCE}

    @classmethod
    def from_config(cls, config, **kwargs) -> Masker:
        """A masker for a mixture config (configs/mixtures/*.py): alphas, sampling_weights,
        input_tokens, target_tokens and optional min_input_tokens, min_target_tokens."""
        def token_range(key):
            low = config.get(f"min_{key}", None)
            return (config[key] if low is None else low, config[key])
        return cls(MaskingMixture.from_config(config), token_range("input_tokens"),
                   token_range("target_tokens"), **kwargs)

    @staticmethod
    def _group_images(specs: list[Modality]) -> list[_ImageGroup]:
        groups = []
        for size in sorted({spec.max_tokens for spec in specs if spec.is_image}):
            positions = [i for i, spec in enumerate(specs) if spec.is_image and spec.max_tokens == size]
            tokens = [specs[i] for i in positions if specs[i].kind is Kind.IMAGE_TOKENS]
            groups.append(_ImageGroup(
                size=size, positions=np.array(positions), names=tuple(specs[i].name for i in positions),
                token_names=tuple(spec.name for spec in tokens),
                vocab_column=np.array([spec.vocab_size for spec in tokens], np.uint32)[:, None, None]))
        return groups

    def output_spec(self) -> dict[str, dict[str, tuple[tuple[int, ...], np.dtype]]]:
        """Static (shape, dtype) of every output array of one example, per modality (pixels: the
        placeholder's)."""
        return {name: {key: (value.shape, value.dtype)
                       for key, value in placeholder(spec, self.pixel_format).items()}
                for name, spec in self.specs.items()}

    def __call__(self, example: Example, rng: np.random.Generator,
                 stats: dict[str, Any] | None = None) -> dict[str, MaskedModality]:
        """Masks one example; when `stats` is a dict it receives the draw's internals (component,
        budgets, span-masking retries and keep probabilities), keyed like the fixture fields."""
        batch_stats = None if stats is None else {}
        out = self.mask_batch([example], rng, batch_stats)
        if stats is not None:
            stats.update({key: values[0] for key, values in batch_stats.items()})
        return {name: {key: value[0] for key, value in arrays.items()} for name, arrays in out.items()}

    def mask_batch(self, examples: Sequence[Example], rng: np.random.Generator,
                   stats: dict[str, Any] | None = None) -> dict[str, MaskedModality]:
        """Masks each example independently (the same distribution as one at a time); returns
        arrays with a leading batch axis. `stats` receives one list entry per example."""
        batch = len(examples)
        if not batch:
            raise ValueError("mask_batch needs at least one example")
        components = np.searchsorted(self._cum_weights, rng.random(batch) * self._cum_weights[-1], "right")
        num_input = _draw_counts(rng, self.input_range, batch)
        num_target = _draw_counts(rng, self.target_range, batch)
        input_budget, target_budget = self._budgets(rng, components, num_input, num_target)
        if stats is not None:
            stats.update(dir_idx=components.tolist(), num_input_tokens=num_input.tolist(),
                         num_target_tokens=[None] * batch if num_target is None else num_target.tolist())
            for i, name in enumerate(self.mixture.modalities):
                stats[f"{name}/in_budget"] = input_budget[:, i].tolist()
                stats[f"{name}/tg_budget"] = ([None] * batch if target_budget is None
                                              else target_budget[:, i].tolist())
        out = {}
        for group in self._image_groups:
            self._mask_images(group, examples, rng, input_budget, target_budget, out)
        for i, spec in self._sequences:
            values = [_lookup(example, spec.name) for example in examples]
            keep_schemes = [self.mixture.keep[c][i] for c in components.tolist()]
            in_budget = input_budget[:, i].tolist()
            if spec.kind is Kind.SEQUENCE:
                tg_budget = None if target_budget is None else target_budget[:, i].tolist()
                out[spec.name] = self._mask_sequences(spec, values, rng, in_budget, tg_budget, keep_schemes,
                                                      stats)
            else:
                out[spec.name] = _mask_sequence_embeddings(spec, values, rng, in_budget, keep_schemes, stats)
        for name, arrays in self._placeholders.items():
            out[name] = {key: np.broadcast_to(value, (batch, *value.shape)) for key, value in arrays.items()}
        return {name: out[name] for name in self.output_modalities}

    def _budgets(self, rng, components: np.ndarray, num_input: np.ndarray, num_target: np.ndarray | None):
        """Token budgets int64 [B, M] (target None without a target count), clamped to max_tokens (an
        image's target to what its input leaves); clamped tokens are not redistributed."""
        counts = np.zeros((len(components), 2), np.int64)
        counts[:, 0] = num_input
        if num_target is not None:
            counts[:, 1] = num_target
        if len(components) == 1:
            budgets = self._dirichlets[int(components[0])].budgets(rng, counts)
        else:
            budgets = np.empty((len(components), 2, len(self.mixture.modalities)), np.int64)
            for c in np.unique(components).tolist():
                rows = np.flatnonzero(components == c)
                budgets[rows] = self._dirichlets[c].budgets(rng, counts[rows])
        input_budget = np.minimum(budgets[:, 0], self._max_tokens)
        if num_target is None:
            return input_budget, None
        return input_budget, np.minimum(budgets[:, 1], self._max_tokens - self._is_image * input_budget)

    def _mask_images(self, group: _ImageGroup, examples, rng, input_budget, target_budget, out):
        count, batch, size = len(group.names), len(examples), group.size
        # Uniformly random disjoint subsets (ml-4m ranks the slots by random noise): slot i is an input
        # iff its key is among the k_in smallest of its row, a target iff among the next k_tg.
        # Column 0 holds -1, below every key, so sorted_keys[r, k] is the k-th smallest (k = 0: none).
        keys = rng.random((count * batch, size + 1))
        keys[:, 0] = -1.0
        sorted_keys = np.sort(keys, axis=1)
        keys = keys[:, 1:]
        rows = np.arange(count * batch)
        k_in = np.ravel(input_budget[:, group.positions], order="F")  # [modality, example] flattened
        input_mask = keys > sorted_keys[rows, k_in][:, None]
        if target_budget is None:
            target_mask = ~input_mask
            k_tg = size - k_in
        else:
            k_tg = np.ravel(target_budget[:, group.positions], order="F")
            target_mask = ~input_mask | (keys > sorted_keys[rows, k_in + k_tg][:, None])
        decoder_attention_mask = np.zeros((count * batch, size), np.int32)
        decoder_attention_mask[rows, target_mask.argmin(axis=1)] = k_tg
        shape = (count, batch, size)
        masks = zip(input_mask.reshape(shape), target_mask.reshape(shape),
                    decoder_attention_mask.reshape(shape), strict=True)
        tokens = dict(zip(group.token_names, self._image_tokens(group, examples), strict=True))
        for name, (input_rows, target_rows, attention_rows) in zip(group.names, masks, strict=True):
            tensor = tokens[name] if name in tokens else _stack([_lookup(e, name) for e in examples])
            out[name] = dict(tensor=tensor, input_mask=input_rows, target_mask=target_rows,
                             decoder_attention_mask=attention_rows)

    def _image_tokens(self, group: _ImageGroup, examples) -> np.ndarray:
        """The group's token grids as int32 [modalities, B, N], checked for shape, dtype, vocabulary."""
        if not group.token_names:
            return np.empty((0, len(examples), group.size), np.int32)
        values = [_lookup(example, name) for name in group.token_names for example in examples]
        try:
            tokens = np.array(values)
        except ValueError:  # ragged
            tokens = None
        if tokens is None or tokens.shape[1:] != (group.size,) or tokens.dtype.kind not in "iu":
            for name in group.token_names:
                for index, example in enumerate(examples):
                    value = np.asarray(_lookup(example, name))
                    if value.shape != (group.size,) or value.dtype.kind not in "iu":
                        raise ValueError(f"modality {name!r} (example {index}): expected integer token "
                                         f"ids of shape ({group.size},), got shape {value.shape} dtype "
                                         f"{value.dtype}")
        tokens = tokens.reshape(len(group.token_names), len(examples), group.size)
        given = tokens
        if tokens.dtype.itemsize > 4 and (tokens.min() < -2**31 or tokens.max() >= 2**31):
            tokens = np.clip(tokens, -1, 2**31 - 1)  # outside every vocabulary either way
        tokens = tokens.astype(np.int32, copy=False)
        # Viewed as unsigned, negative ids are huge: one comparison checks both ends.
        if self.check_ids and (tokens.view(np.uint32) >= group.vocab_column).any():
            row, index, col = np.argwhere((tokens < 0) | (tokens >= group.vocab_column))[0]
            raise ValueError(f"modality {group.token_names[row]!r} (example {index}): token id "
                             f"{given[row, index, col]} at index {col} is outside the vocabulary "
                             f"[0, {group.vocab_column[row, 0, 0]})")
        return tokens

    def _mask_sequences(self, spec: Modality, values, rng, input_budget: list[int],
                        target_budget: list[int] | None, keep_schemes: list[str], stats) -> MaskedModality:
        slots = self._sequence_slots[spec.name]
        tensor = np.zeros((len(values), slots.length), np.int32)
        input_masks, target_masks, attention_masks, records = [], [], [], []
        for b, value in enumerate(values):
            elements, lengths = self._sequence_elements(spec, value, b)
            keep, calls, keep_init, keep_final = _span_keep(rng, len(elements), lengths, input_budget[b],
                                                            keep_schemes[b])
            input_ids, target_ids = _span_corrupt(elements, keep, chunked=lengths is not None)
            if input_budget[b] == 0:
                input_ids = []  # not even the sentinel: the whole sequence is target
            records.append((len(target_ids), calls, keep_init, keep_final))
            if target_budget is not None and len(target_ids) > target_budget[b]:
                target_ids = _truncate_target(rng, target_ids, target_budget[b])
            tensor[b, :len(input_ids)] = input_ids
            tensor[b, input_budget[b]:input_budget[b] + len(target_ids)] = target_ids
            input_masks.append(slots.input_mask(len(input_ids)))
            target_mask, attention_mask = slots.target(input_budget[b], len(target_ids))
            target_masks.append(target_mask)
            attention_masks.append(attention_mask)
        if stats is not None:
            for key, column in zip(("full_target_len", "n_span_calls", "keep_prob_init", "keep_prob_final"),
                                   zip(*records, strict=True), strict=True):
                stats[f"{spec.name}/{key}"] = list(column)
        return dict(tensor=tensor, input_mask=_stack(input_masks), target_mask=_stack(target_masks),
                    decoder_attention_mask=_stack(attention_masks))

    def _sequence_elements(self, spec: Modality, value, index: int) -> tuple[list, list[int] | None]:
        """Token ids + EOS cut to max_tokens (EOS is lost when too long, as in ml-4m); or chunks + an
        EOS chunk, keeping the chunks whose cumulative length fits max_tokens, with their lengths."""
        where = f"modality {spec.name!r} (example {index})"
        if isinstance(value, str):
            raise TypeError(f"{where}: expected token ids, got text; tokenize it with fourm_jax.text first")
        if not (isinstance(value, (list, tuple)) and value and not np.isscalar(value[0])):
            ids = np.asarray(value)
            self._check_ids(spec, where, ids, ids.ndim == 1, None)
            return (ids.tolist() + [EOS_ID])[:spec.max_tokens], None
        chunks = [np.asarray(chunk) for chunk in value]
        lengths = [chunk.size for chunk in chunks]
        if 0 in lengths:
            raise ValueError(f"{where}: chunk {lengths.index(0)} has no tokens")
        self._check_ids(spec, where, chunks, all(chunk.ndim == 1 for chunk in chunks), lengths)
        lengths.append(1)
        fit = int(np.searchsorted(np.cumsum(lengths), spec.max_tokens, side="right"))
        elements = [chunk.tolist() for chunk in chunks[:fit]] + [[EOS_ID]]
        return elements[:fit], lengths[:fit]

    def _check_ids(self, spec: Modality, where: str, ids, is_1d: bool, lengths: list[int] | None) -> None:
        """Raises, naming the modality and example (and chunk), unless `ids` (an array, or a list of
        chunk arrays with their lengths) are 1-D integer token ids inside the vocabulary."""
        flat = np.concatenate(ids) if lengths else np.asarray(ids)
        if not is_1d or (flat.size and flat.dtype.kind not in "iu"):
            shapes = [chunk.shape for chunk in ids] if lengths else flat.shape
            raise ValueError(f"{where}: expected 1-D integer token ids (or a list of them), got shape "
                             f"{shapes} dtype {flat.dtype}")
        if self.check_ids and flat.size and not _within(flat, spec.vocab_size):
            bad = int(np.flatnonzero((flat < 0) | (flat >= spec.vocab_size))[0])
            position = f"index {bad}"
            if lengths:
                chunk = int(np.searchsorted(np.cumsum(lengths), bad, side="right"))
                position = f"chunk {chunk} index {bad - sum(lengths[:chunk])}"
            raise ValueError(f"{where}: token id {flat[bad]} at {position} is outside the vocabulary "
                             f"[0, {spec.vocab_size})")


class _SequenceSlots:
    """The fixed-length slot of a sequence modality. Its masks are windows into precomputed
    read-only arrays, so one example costs no mask computation."""

    def __init__(self, length: int):
        self.length = length
        # input_mask with n inputs = prefix[length - n : 2 length - n]: False on [0, n).
        self._prefix = np.concatenate([np.zeros(length, bool), np.ones(length, bool)])
        self._prefix.flags.writeable = False
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def input_mask(self, count: int) -> np.ndarray:
        return self._prefix[self.length - count:2 * self.length - count]

    def target(self, start: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(target_mask, decoder_attention_mask) for `count` targets from `start`: windows into
        [True x length, False x count, True x length] and [0 x length, 1 x count, 0 x length]."""
        sources = self._blocks.get(count)
        if sources is None:
            used = np.zeros(2 * self.length + count, bool)
            used[self.length:self.length + count] = True
            sources = self._blocks[count] = (~used, used.astype(np.int32))
            for source in sources:
                source.flags.writeable = False
        begin = self.length - start
        return sources[0][begin:begin + self.length], sources[1][begin:begin + self.length]


def _within(ids: np.ndarray, vocab_size: int) -> bool:
    """Whether all integer ids lie in [0, vocab_size), with one reduction where the dtype allows
    (viewed as unsigned, negative ids are huge)."""
    bits = 8 * ids.dtype.itemsize
    if ids.dtype.kind == "u":
        return int(np.maximum.reduce(ids)) < vocab_size
    if vocab_size <= 2 ** (bits - 1):
        return int(np.maximum.reduce(ids.view(f"u{ids.dtype.itemsize}"))) < vocab_size
    return int(np.minimum.reduce(ids)) >= 0 and int(np.maximum.reduce(ids)) < vocab_size


PIXEL_FORMATS = ("float32_chw", "uint8_hwc")


def placeholder(spec: Modality, pixel_format: str = "float32_chw") -> MaskedModality:
    """A fully masked modality (all masks True, zero tensor) with the shapes `Masker` emits; its
    arrays are read-only and may be shared between examples. Pixels: ml-4m's float32 [C, H, W], or
    uint8 [H, W, C]."""
    length = 2 * (spec.max_tokens + 1) if spec.kind is Kind.SEQUENCE else spec.max_tokens
    if spec.kind is Kind.SEQUENCE_EMBEDDING:
        tensor = np.zeros((length, spec.embedding_dim), np.float32)
    elif spec.kind is Kind.IMAGE_PIXELS and pixel_format == "uint8_hwc":
        tensor = np.zeros((spec.input_size, spec.input_size, spec.num_channels), np.uint8)
    elif spec.kind is Kind.IMAGE_PIXELS:
        tensor = np.zeros((spec.num_channels, spec.input_size, spec.input_size), np.float32)
    else:
        tensor = np.zeros(length, np.int32)
    arrays = dict(tensor=tensor, input_mask=np.ones(length, bool), target_mask=np.ones(length, bool),
                  decoder_attention_mask=np.zeros(length, np.int32))
    for value in arrays.values():
        value.flags.writeable = False
    return arrays


def _check_maskable(spec: Modality) -> None:
    if spec.kind is Kind.FEATURE_MAP or not (spec.encoder or spec.decoder) or spec.max_tokens is None:
        raise ValueError(f"modality {spec.name!r} ({spec.kind.value}) has no 4M embedding; it cannot "
                         "be masked")
    if spec.kind is Kind.SEQUENCE:
        if spec.vocab_size is None:
            raise ValueError(f"modality {spec.name!r}: a sequence modality needs vocab_size")
        # At most ceil(max/2) masked runs, plus the closing sentinel, must fit [S_1]..[S_199].
        if (spec.max_tokens + 1) // 2 + 1 > NUM_SENTINELS - 1:
            raise ValueError(f"modality {spec.name!r}: max_tokens {spec.max_tokens} needs more sentinels "
                             f"than the {NUM_SENTINELS - 1} span masking can use")
    if spec.kind is Kind.SEQUENCE_EMBEDDING and spec.embedding_dim is None:
        raise ValueError(f"modality {spec.name!r}: a sequence-embedding modality needs embedding_dim")


def _lookup(example: Example, name: str):
    if name in example:
        return example[name]
    base = name.split("@")[0]  # ml-4m falls back to the name without its resolution suffix
    if base in example:
        return example[base]
    raise KeyError(f"example has no modality {name!r} (keys: {sorted(example)}); the masking mixture "
                   "needs it")


def _stack(values: list) -> np.ndarray:
    """Stacked values; one value is only given a batch axis (a view: pixels are not copied)."""
    return np.asarray(values[0])[None] if len(values) == 1 else np.stack(values)


def _draw_counts(rng: np.random.Generator, token_range: tuple[int, int] | None, batch: int):
    if token_range is None:
        return None
    low, high = token_range
    return np.full(batch, low, np.int64) if low == high else rng.integers(low, high + 1, batch)


def _initial_keep_prob(rng: np.random.Generator, scheme: str) -> float:
    if scheme == "random":
        return rng.random()
    if scheme == "all":
        return 1.0
    return float(rng.random() < 0.5)  # 'binary'


def _span_keep(rng, size: int, lengths: list[int] | None, input_budget: int, keep_scheme: str):
    """Which of `size` elements stay visible: each is kept iff u <= q; while the corrupted input
    (kept tokens + one sentinel per masked run) exceeds the budget, q *= 0.9 and redraw.

    Returns (keep: list of bool, number of span-masking calls, first q, last q).
    """
    if input_budget == 0:
        return [False] * size, 1, 0.0, 0.0
    q0 = _initial_keep_prob(rng, keep_scheme)
    tokens = size if lengths is None else sum(lengths)
    if input_budget >= tokens:
        # The corrupted input is never longer than the sequence: the first draw always fits.
        return (rng.random(size) <= q0).tolist(), 1, q0, q0
    weights = None if lengths is None else np.array(lengths)
    # The input holds about tokens * q * (2 - q) ids: the budget needs q ~ budget / (2 tokens).
    needed = math.log(max(input_budget / (2 * tokens * max(q0, 1e-12)), 1e-12)) / math.log(KEEP_PROB_DECAY)
    done, block = 0, min(max(int(needed) + _MIN_BLOCK, _MIN_BLOCK), _MAX_BLOCK)
    while True:
        if done + block <= len(_DECAY_POWERS):
            q = q0 * _DECAY_POWERS[done:done + block]
        else:
            q = q0 * KEEP_PROB_DECAY ** np.arange(done, done + block)
        # Column 0 is a kept element before the sequence, so a masked run starts wherever a masked
        # element follows a kept one.
        draws = rng.random((block, size + 1))
        draws[:, 0] = -1.0
        kept = draws <= q[:, None]
        if weights is None:
            input_length = np.add.reduce(kept[:, 1:] | kept[:, :-1], axis=1, dtype=np.intp)
        else:
            input_length = kept[:, 1:] @ weights + np.add.reduce(kept[:, :-1] > kept[:, 1:], axis=1,
                                                                 dtype=np.intp)
        j = int((input_length <= input_budget).argmax())
        if input_length[j] <= input_budget:
            return kept[j, 1:].tolist(), done + j + 1, q0, float(q[j])
        done, block = done + block, _MAX_BLOCK


def _span_corrupt(elements: list, keep: list[bool], chunked: bool) -> tuple[list[int], list[int]]:
    """T5-style corruption: kept elements go to the input; each maximal masked run is replaced in the
    input by a new sentinel [S_1], [S_2], ... and goes to the target after the same sentinel; the
    target ends with the next sentinel."""
    input_ids, target_ids = [], []
    add_input = input_ids.extend if chunked else input_ids.append
    add_target = target_ids.extend if chunked else target_ids.append
    sentinel = FIRST_SENTINEL_ID - 1
    in_run = False
    for element, kept in zip(elements, keep, strict=True):
        if kept:
            add_input(element)
            in_run = False
        else:
            if not in_run:
                sentinel += 1
                input_ids.append(sentinel)
                target_ids.append(sentinel)
                in_run = True
            add_target(element)
    target_ids.append(sentinel + 1)
    return input_ids, target_ids


def _truncate_target(rng, target_ids: list[int], budget: int) -> list[int]:
    """ml-4m's target truncation: a window of `budget` tokens from a random sentinel (never the closing
    one when there are others), or, when that window would run past the end, the shortest suffix
    that starts at a sentinel and fits."""
    starts = [i for i, token in enumerate(target_ids) if SENTINEL_OFFSET <= token < _SENTINEL_END]
    start = starts[int(rng.random() * max(1, len(starts) - 1))]
    if len(target_ids) - start >= budget:
        return target_ids[start:start + budget]
    for start in starts:
        if len(target_ids) - start <= budget:
            return target_ids[start:]
    return target_ids


def _mask_sequence_embeddings(spec: Modality, values, rng, input_budget: list[int], keep_schemes: list[str],
                              stats) -> MaskedModality:
    """Span masking over embedding rows (ml-4m's t5_caption): the input holds the kept rows in order
    and a zero row where it has a sentinel; the modality is never a target."""
    tensor = np.zeros((len(values), spec.max_tokens, spec.embedding_dim), np.float32)
    inputs = np.empty(len(values), np.int64)
    records = []
    for b, value in enumerate(values):
        emb = np.asarray(value)
        if emb.ndim != 2 or emb.shape[1] != spec.embedding_dim or emb.dtype.kind != "f":
            raise ValueError(f"modality {spec.name!r} (example {b}): expected float embeddings [length, "
                             f"{spec.embedding_dim}], got shape {emb.shape} dtype {emb.dtype}")
        emb = emb[:spec.max_tokens]
        keep, *record = _span_keep(rng, len(emb), None, input_budget[b], keep_schemes[b])
        records.append(record)
        # The corrupted input: a kept row, or a zero row (-1) for the sentinel opening each masked run.
        source, in_run = [], False
        for row, kept in enumerate(keep):
            if kept or not in_run:
                source.append(row if kept else -1)
            in_run = not kept
        source = np.array(source if input_budget[b] else [], np.int64)
        positions = np.flatnonzero(source >= 0)
        tensor[b, positions] = emb[source[positions]]
        inputs[b] = len(source)
    if stats is not None:
        keys = ("n_span_calls", "keep_prob_init", "keep_prob_final")
        for key, column in zip(keys, zip(*records, strict=True), strict=True):
            stats[f"{spec.name}/{key}"] = list(column)
    batch = (len(values), spec.max_tokens)
    return dict(tensor=tensor, input_mask=np.arange(spec.max_tokens) >= inputs[:, None],
                target_mask=np.ones(batch, bool), decoder_attention_mask=np.zeros(batch, np.int32))
