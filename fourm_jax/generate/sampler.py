"""Any-to-any generation with a 4M model: MaskGIT, ROAR and autoregressive decoding, guidance,
chaining and in-painting, as ml-4m's GenerationSampler (../shared/reference, part A).

    sampler = GenerationSampler(model)                      # optionally mesh=..., rules=...
    schedule = build_chained_generation_schedules(...)      # ml-4m's step list
    out = sampler.generate(mod_dict, schedule, top_k=0, top_p=0.0, seed=0)

The mod_dict lives on the host (numpy; see mod_dict.py). Consecutive schedule steps with the same
target, scheme and guidance form a segment that runs as one jit-compiled, fixed-shape loop
(`lax.fori_loop` over its steps; `lax.while_loop` over tokens for autoregressive targets):

- every step runs the encoder once on the visible tokens of all domains (a static token budget
  computed on the host, padding masked), then the decoder on the target's queries: MaskGIT queries
  all remaining target positions (mask token + position) and commits the k most confident
  samples; ROAR queries k remaining positions in a random order shared by the batch and commits
  them all. Committed tokens become inputs (input_mask False) and stop being targets.
- autoregressive targets (sequences) decode one token at a time with a key-value cache, computing
  logits for the newest position only, until every row has produced the final target token
  (the last target id of row 0, e.g. [S_2] or [EOS]); the generated spans are then merged back
  into the input sequence on the host, which becomes a fully visible input for later steps.
- classifier-free guidance runs the passes it needs (conditional, unconditional with the guided
  conditions emptied as ml-4m empties them; or one pass per weighted condition) as one batch and
  combines logits as l_uncond + sum_i w_i (l_cond_i - l_uncond) before filtering and sampling.
- every step draws its randomness from fold_in(key, step): a seed gives the same output whatever
  the batch sharding.

Differences from ml-4m, all deliberate: randomness comes from JAX keys (same law, other numbers);
MaskGIT's ties between equal confidences (every confidence is 1 under greedy sampling) are broken
by a random priority per position instead of torch.topk's internal order, and `priorities` can
replace the random ROAR order and tie-break (replaying a recorded run); a cfg_scale given as a list
weighs one condition each (multi-condition guidance, ml-4m's generate_multi_guided); a model with
register tokens works. Bad input raises ValueError naming the domain, field or step before anything
is compiled.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from fourm_jax import modalities, sharding
from fourm_jax.convert.ml4m import relayout
from fourm_jax.generate import mod_dict as md
from fourm_jax.generate.sampling import GREEDY_TEMPERATURE, sample_tokens, top_k_count
from fourm_jax.generate.schedules import check_registered, check_target
from fourm_jax.modalities import Kind
from fourm_jax.model.embeddings import take_rows
from fourm_jax.model.fourm import FourM
from fourm_jax.text import formats, layout

ENCODER_TOKEN_MULTIPLE = 16  # encoder budgets are rounded up to this, so similar inputs share a compile


@dataclasses.dataclass(frozen=True)
class Segment:
    """Consecutive schedule steps run by one compiled loop."""

    target: str
    scheme: str
    first_step: int
    num_tokens: tuple[int, ...]
    temperatures: tuple[float, ...]
    weights: tuple[tuple[float, ...], ...]  # per step, one weight per guided pass
    passes: tuple[tuple[str, ...], ...]  # per pass, the conditions it empties; pass 0 is the base


# ----------------------------------------------------------------------------- device side

def _emptied(domain: str, d: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """A condition as ml-4m's unconditional pass sees it: images hidden; a sequence reduced to a
    visible [S_1]; a sequence embedding to one visible zero vector."""
    kind = modalities.get(domain).kind
    hidden = jnp.ones_like(d["input_mask"])
    if kind in (Kind.IMAGE_PIXELS, Kind.IMAGE_TOKENS):
        return dict(d, input_mask=hidden)
    first_visible = hidden.at[:, 0].set(False)
    if kind is Kind.SEQUENCE:
        length = d["tensor"].shape[1]
        row = jnp.zeros((length,), d["tensor"].dtype).at[:2].set(md.S_1).at[length - 1].set(md.S_2)
        return dict(d, tensor=jnp.broadcast_to(row, d["tensor"].shape), input_mask=first_visible)
    return dict(d, tensor=jnp.zeros_like(d["tensor"]), input_mask=first_visible)


def _pass_batch(domains, passes):
    """Every domain in every pass, concatenated along the batch axis (pass-major)."""
    variants = [{name: (_emptied(name, d) if name in emptied else d) for name, d in domains.items()}
                for emptied in passes]
    return {name: {k: jnp.concatenate([v[name][k] for v in variants]) for k in ("tensor", "input_mask")}
            for name in domains}


def _embed_conditions(model: FourM, domains, target: str, passes):
    """(x, emb, excluded, modality ids) of every encoder domain but the target, all positions, all
    passes: the fixed part of the encoder input, embedded once per loop."""
    fixed = {name: d for name, d in domains.items() if name in model.encoder_embeddings and name != target}
    parts = []
    for name, d in sorted(_pass_batch(fixed, passes).items()):
        x, emb = model.embed_encoder_modality(name, d)
        ids = jnp.full(d["input_mask"].shape, modalities.get(name).id, jnp.int32)
        parts.append((x, emb, d["input_mask"], ids))
    return tuple(jnp.concatenate(arrays, axis=1) for arrays in zip(*parts, strict=True)) if parts else None


def _encode(model: FourM, conditions, target: str, d, passes, num_encoder_tokens: int):
    """(context, encoder mask, empty-context rows) of all passes, the target's current tokens added
    to the embedded conditions; a pass whose rows have no visible token at all runs the decoder
    without cross-attention, as ml-4m on an empty encoder sequence."""
    parts = [] if conditions is None else [conditions]
    if target in model.encoder_embeddings:
        x, emb = model.embed_encoder_modality(target, d)
        ids = jnp.full(d["input_mask"].shape, modalities.get(target).id, jnp.int32)
        parts.append(tuple(_tile(a, passes) for a in (x, emb, d["input_mask"], ids)))
    x, emb, excluded, ids = (jnp.concatenate(arrays, axis=1) for arrays in zip(*parts, strict=True))
    enc = model.keep_encoder_tokens(x, emb, excluded, ids, num_encoder_tokens)
    context = model.decoder_context(model.encode(enc.x + enc.emb, enc.mask), enc.emb)
    visible = ~enc.mask.reshape(len(passes), -1)
    empty = jnp.repeat(~visible.any(axis=1), enc.mask.shape[0] // len(passes))
    return context, enc.mask, empty


def _guide(logits_P, weights_W):
    """l_0 + sum_i w_i (l_i - l_0) over the passes (leading axis)."""
    guided = logits_P[0]
    for i in range(1, logits_P.shape[0]):
        guided = guided + (logits_P[i] - logits_P[0]) * weights_W[i - 1]
    return guided


def _tile(x, passes):
    return jnp.concatenate([x] * len(passes)) if len(passes) > 1 else x


@functools.partial(jax.jit, static_argnames=("graphdef", "target", "scheme", "passes", "num_encoder_tokens",
                                             "num_queries", "top_k", "top_p", "sampling"))
def _image_segment(graphdef, state, domains, key, num_tokens_S, temperatures_S, weights_SW, priorities_SN,
                   first_step, *, target, scheme, passes, num_encoder_tokens, num_queries, top_k, top_p,
                   sampling):
    """MaskGIT or ROAR steps on an image-token target; returns its (tensor, input_mask,
    target_mask) and the step at which each position was decoded (-1: not in this segment)."""
    model = nnx.merge(graphdef, state)
    t = domains[target]
    batch_size, n = t["tensor"].shape
    rows = jnp.arange(batch_size)[:, None]
    m = num_queries

    def step(s, carry):
        tensor, input_mask, target_mask, step_of = carry
        key_s = jax.random.fold_in(key, first_step + s)
        if priorities_SN is None:
            priority = jax.random.uniform(jax.random.fold_in(key_s, 0), (n,))
        else:
            priority = priorities_SN[s]
        k = num_tokens_S[s]
        if scheme == "maskgit":  # every remaining target, in position order
            order = jnp.argsort(target_mask.astype(jnp.int32), axis=1, stable=True)
        else:  # ROAR: remaining targets by priority (one random order for the batch)
            order = jnp.lexsort((jnp.broadcast_to(priority, (batch_size, n)), target_mask.astype(jnp.int32)),
                                axis=-1)
        query_pos = order[:, :m]
        valid = ~jnp.take_along_axis(target_mask, query_pos, axis=1)
        if scheme == "roar":
            valid = valid & (jnp.arange(m) < k)

        current = dict(t, tensor=tensor, input_mask=input_mask, target_mask=target_mask)
        context, encoder_mask, empty = _encode(model, conditions, target, current, passes, num_encoder_tokens)
        _, emb, _ = model.embed_decoder_modality(target, current)
        y = model.mask_token[...] + take_rows(emb, query_pos)
        blocked = jnp.broadcast_to(~valid[:, None, :], (batch_size, m, m))  # queries see valid queries
        out = model.decode(_tile(y, passes), context, encoder_mask, _tile(blocked, passes), empty)
        logits = model.logits(target, out).reshape(len(passes), batch_size, m, -1)
        samples, confidence = sample_tokens(jax.random.fold_in(key_s, 1), _guide(logits, weights_SW[s]),
                                            temperatures_S[s], top_k, top_p, sampling)
        if scheme == "maskgit":  # the k most confident; ties: lower priority first
            _, _, ranked = jax.lax.sort((jnp.where(valid, -confidence, jnp.inf), priority[query_pos],
                                         jnp.broadcast_to(jnp.arange(m), (batch_size, m))),
                                        dimension=1, num_keys=2)
            commit = jnp.zeros((batch_size, m), bool).at[rows, ranked].set(jnp.arange(m) < k) & valid
        else:
            commit = valid
        tensor = tensor.at[rows, query_pos].set(jnp.where(commit, samples, tensor[rows, query_pos]))
        input_mask = input_mask.at[rows, query_pos].set(input_mask[rows, query_pos] & ~commit)
        target_mask = target_mask.at[rows, query_pos].set(target_mask[rows, query_pos] | commit)
        step_of = step_of.at[rows, query_pos].set(jnp.where(commit, first_step + s, step_of[rows, query_pos]))
        return tensor, input_mask, target_mask, step_of

    conditions = _embed_conditions(model, domains, target, passes)
    carry = (t["tensor"], t["input_mask"], t["target_mask"], jnp.full((batch_size, n), -1, jnp.int32))
    return jax.lax.fori_loop(0, num_tokens_S.shape[0], step, carry)


@functools.partial(jax.jit, static_argnames=("graphdef", "target", "passes", "num_encoder_tokens",
                                             "num_targets", "max_new_tokens", "top_k", "top_p", "sampling"))
def _sequence_segment(graphdef, state, domains, key, temperature, weights_W, *, target, passes,
                      num_encoder_tokens, num_targets, max_new_tokens, top_k, top_p, sampling):
    """Autoregressive decoding of a sequence target with a key-value cache: (ids (B, 1 +
    max_new_tokens), number of valid columns). Column 0 is each row's first target token."""
    model = nnx.merge(graphdef, state)
    t = domains[target]
    batch_size = t["tensor"].shape[0]
    conditions = _embed_conditions(model, domains, target, passes)
    context, encoder_mask, empty = _encode(model, conditions, target, t, passes, num_encoder_tokens)

    positions = jnp.argsort(t["target_mask"].astype(jnp.int32), axis=1, stable=True)[:, :num_targets]
    valid = ~jnp.take_along_axis(t["target_mask"], positions, axis=1)
    _, emb, ids = model.embed_decoder_modality(target, t)
    ids = jnp.where(valid, jnp.take_along_axis(ids, positions, axis=1), 0).astype(jnp.int32)
    emb = jnp.where(valid[..., None], take_rows(emb, positions), 0.0)
    eos = ids[0, num_targets - 1]  # the final target token of row 0 ends decoding

    out = jnp.zeros((batch_size, max_new_tokens + 1), jnp.int32).at[:, 0].set(ids[:, 0])
    cache = model.init_decoder_cache(context, max_new_tokens)

    def running(carry):
        i, _, done, _ = carry
        return (i < max_new_tokens) & ~jnp.all(done)

    def step(carry):
        i, out, done, cache = carry
        token = jax.lax.dynamic_index_in_dim(out, i, axis=1, keepdims=False)
        y = model.embed_decoder_tokens(target, token) + jax.lax.dynamic_index_in_dim(emb, i, 1, False)
        y, cache = model.decode_step(_tile(y[:, None], passes), cache, i, encoder_mask, empty)
        logits = model.logits(target, y[:, 0]).reshape(len(passes), batch_size, -1)
        sample, _ = sample_tokens(jax.random.fold_in(key, i), _guide(logits, weights_W), temperature,
                                  top_k, top_p, sampling)
        out = jax.lax.dynamic_update_index_in_dim(out, sample, i + 1, axis=1)
        return i + 1, out, done | (sample == eos), cache

    i, out, _, _ = jax.lax.while_loop(running, step, (jnp.asarray(0), out, out[:, 0] == eos, cache))
    return out, i + 1


# ----------------------------------------------------------------------------- host side

def merge_sequences(d: Mapping[str, np.ndarray], generated: np.ndarray) -> dict[str, np.ndarray]:
    """ml-4m's merge_sequences_batched: per row, the visible input ids (or [S_1] if none) with each
    sentinel replaced by the generated span that follows the same sentinel; rows right-padded with
    [PAD] (input_mask True there). The result is a plain input: target_mask equals input_mask."""
    rows = []
    for tensor, input_mask, ids in zip(d["tensor"], d["input_mask"], generated, strict=True):
        given = tensor[~input_mask].tolist() or [md.S_1]
        rows.append(formats.merge_spans(given, ids.tolist()))
    length = max(len(r) for r in rows)
    tensor = np.full((len(rows), length), layout.PAD_ID, np.int32)
    input_mask = np.ones((len(rows), length), bool)
    for i, r in enumerate(rows):
        tensor[i, :len(r)] = r
        input_mask[i, :len(r)] = False
    return dict(tensor=tensor, input_mask=input_mask, target_mask=input_mask.copy(),
                decoder_attention_mask=np.zeros_like(input_mask))


class GenerationSampler:
    """Runs generation schedules on a FourM (see the module docstring).

    With a mesh, parameters are placed by the sharding rules and every batch is split over the
    mesh axes that the rules give the `batch` axis; the batch size must be a multiple of their size.
    MaskGIT/ROAR segments run as up to `shape_buckets` loops with shrinking query and encoder sizes
    (each a compilation: fewer buckets compile faster, more run faster; results are the same).
    A model with scanned layers is run with its layers unrolled (a copy of its parameters in the
    unscanned layout): inside generation's loops a scanned stack slices every layer's parameters
    and cache out of the stacked arrays at each step, which doubled the time of a decoding step.
    """

    def __init__(self, model: FourM, *, mesh: Mesh | None = None, rules=sharding.DEFAULT_RULES,
                 shape_buckets: int = 4):
        if shape_buckets < 1:
            raise ValueError(f"shape_buckets must be at least 1, got {shape_buckets}")
        if model.config.scan_layers:
            model = relayout(model, dataclasses.replace(model.config, scan_layers=False))
        self.model = model
        self.shape_buckets = shape_buckets
        self.graphdef, self.state = nnx.split(model)
        self.mesh = mesh
        self.rules = sharding.validate_rules(rules)
        if mesh is not None:
            self.state = jax.device_put(self.state, sharding.state_shardings(self.state, mesh, self.rules))
            self._batch_sharding = sharding.batch_sharding(mesh, self.rules)

    # -- validation and planning (host, before any compilation) ---------------------------------

    def check_mod_dict(self, mod_dict: Mapping[str, Mapping[str, np.ndarray]]) -> int:
        """Raises ValueError naming the domain and field of anything the model cannot take;
        returns the batch size."""
        config = self.model.config
        batch_size = None
        for domain, d in mod_dict.items():
            check_registered(f"mod_dict[{domain!r}]", domain)
            if domain not in config.domains_in and domain not in config.domains_out:
                raise ValueError(f"mod_dict[{domain!r}]: the model has no embedding for it; inputs: "
                                 f"{', '.join(config.domains_in)}; outputs: {', '.join(config.domains_out)}")
            for key in ("tensor", "input_mask", "target_mask"):
                if key not in d:
                    raise ValueError(f"mod_dict[{domain!r}]: missing {key!r}")
            modality = modalities.get(domain)
            tensor = np.asarray(d["tensor"])
            if batch_size is None:
                batch_size = tensor.shape[0]
            if tensor.shape[0] != batch_size:
                raise ValueError(f"mod_dict[{domain!r}]['tensor']: batch size {tensor.shape[0]}, other "
                                 f"domains have {batch_size}")
            _check_tensor(domain, modality, tensor)
            positions = md.num_positions(domain, tensor)
            for key in ("input_mask", "target_mask"):
                shape = np.shape(d[key])
                if shape != (batch_size, positions):
                    raise ValueError(f"mod_dict[{domain!r}][{key!r}]: shape {shape}, expected "
                                     f"{(batch_size, positions)}")
        if batch_size is None:
            raise ValueError("mod_dict is empty")
        if self.mesh is not None:
            axes = sharding.dim_axes(self._batch_sharding.spec, 0)
            devices = int(np.prod([self.mesh.shape[a] for a in axes]))
            if batch_size % devices:
                raise ValueError(f"batch size {batch_size} is not a multiple of the {devices} devices the "
                                 "batch is split over")
        return batch_size

    def plan(self, mod_dict, schedule: Sequence[Mapping], top_k: int | float = 0.0,
             top_p: float = 0.0) -> list[Segment]:
        """The segments a schedule runs as, after checking it against the mod_dict and the model."""
        self.check_mod_dict(mod_dict)
        top_k_count(top_k, min(e.vocab_size for e in self.model.decoder_embeddings.values()))
        if not 0.0 <= top_p <= 1.0:
            raise ValueError(f"top_p must be in [0, 1], got {top_p!r}")
        remaining = {}
        segments: list[Segment] = []
        for i, entry in enumerate(schedule):
            target, scheme, passes, weights = self._check_step(i, entry, mod_dict)
            kind = modalities.get(target).kind
            if kind is Kind.SEQUENCE:
                segments.append(Segment(target, "autoregressive", i, (0,), (float(entry["temperature"]),),
                                        (weights,), passes))
                continue
            if target not in remaining:
                counts = (~np.asarray(mod_dict[target]["target_mask"])).sum(1)
                if np.any(counts != counts[0]):
                    raise ValueError(f"mod_dict[{target!r}]: rows have different numbers of target positions "
                                     f"({sorted(set(counts.tolist()))}); every row must have the same")
                remaining[target] = int(counts[0])
            num_tokens = entry.get("num_tokens")
            if not isinstance(num_tokens, (int, np.integer)) or num_tokens < 0:
                raise ValueError(f"schedule[{i}] ({target}): num_tokens must be a non-negative int, got "
                                 f"{num_tokens!r}")
            if num_tokens > remaining[target]:
                raise ValueError(f"schedule[{i}] ({target}): decodes {num_tokens} tokens but only "
                                 f"{remaining[target]} target positions remain (more steps or tokens than "
                                 "the target has)")
            remaining[target] -= int(num_tokens)
            last = segments[-1] if segments else None
            if (last is not None and last.target == target and last.scheme == scheme and last.passes == passes
                    and last.first_step + len(last.num_tokens) == i):
                segments[-1] = dataclasses.replace(
                    last, num_tokens=last.num_tokens + (int(num_tokens),),
                    temperatures=last.temperatures + (float(entry["temperature"]),),
                    weights=last.weights + (weights,))
            else:
                segments.append(Segment(target, scheme, i, (int(num_tokens),), (float(entry["temperature"]),),
                                        (weights,), passes))
        return segments

    def _check_step(self, i: int, entry: Mapping, mod_dict) -> tuple[str, str, tuple, tuple[float, ...]]:
        for key in ("target_domain", "scheme", "temperature"):
            if key not in entry:
                raise ValueError(f"schedule[{i}]: missing {key!r}")
        target, scheme = entry["target_domain"], entry["scheme"]
        where = f"schedule[{i}] ({target!r})"
        check_target(where, target, scheme)
        if target not in self.model.decoder_embeddings:
            raise ValueError(f"{where}: the model cannot generate it; its outputs are "
                             f"{', '.join(self.model.decoder_embeddings)}")
        if target not in mod_dict:
            raise ValueError(f"{where}: not in the mod_dict; add it with init_empty_target_modality")
        if scheme == "autoregressive" and not np.any(~np.asarray(mod_dict[target]["target_mask"])[0]):
            raise ValueError(f"{where}: the sequence has no target position in row 0")
        guided = tuple(entry.get("cfg_cond_domains") or ())
        for name in guided:
            if name not in mod_dict:
                raise ValueError(f"{where}: guidance condition {name!r} is not in the mod_dict")
            if name == target:
                raise ValueError(f"{where}: the target cannot be one of its own guidance conditions")
        scale = entry.get("cfg_scale", 1.0)
        if isinstance(scale, (list, tuple, np.ndarray)):
            weights = tuple(float(w) for w in scale)
            if not guided:
                return target, scheme, ((),), ()
            if len(weights) != len(guided):
                raise ValueError(f"{where}: {len(weights)} guidance weights for {len(guided)} guided "
                                 f"conditions {list(guided)}")
            passes = (guided,) + tuple(tuple(g for g in guided if g != keep) for keep in guided)
            return target, scheme, passes, weights
        if float(scale) == 1.0 or not guided:
            return target, scheme, ((),), ()
        return target, scheme, (guided, ()), (float(scale),)

    def _encoder_budget(self, state, target: str, passes, new_target_tokens: int) -> int:
        """Encoder tokens a run of steps needs at most: the visible tokens of every input domain
        (the target's plus the new_target_tokens its earlier steps commit), at least 1 for an
        emptied sequence; rounded up to a multiple of 16."""
        total, candidates = 0, 0
        guided = {name for emptied in passes for name in emptied}
        for name, d in state.items():
            if name not in self.model.encoder_embeddings:
                continue
            length = d["input_mask"].shape[1]
            visible = int((~d["input_mask"]).sum(1).max())
            if name == target:
                visible = min(length, visible + new_target_tokens)
            if name in guided and modalities.get(name).kind is not Kind.IMAGE_TOKENS:
                visible = max(visible, 1)
            total += visible
            candidates += length
        budget = -(-max(total, 1) // ENCODER_TOKEN_MULTIPLE) * ENCODER_TOKEN_MULTIPLE
        return min(budget, candidates)

    # -- running ------------------------------------------------------------------------------

    def generate(self, mod_dict, schedule: Sequence[Mapping], top_k: int | float = 0.0, top_p: float = 0.0,
                 verbose: bool = False, seed: int = 0, *, key: jax.Array | None = None,
                 priorities: Sequence[np.ndarray | None] | None = None, return_trace: bool = False):
        """Runs `schedule` on a copy of `mod_dict`; returns the new mod_dict (numpy).

        key (or seed) makes the run deterministic. priorities (one (N,) array or None per schedule
        step; lower goes first) replace the random ROAR order and MaskGIT tie-break of those steps.
        With return_trace, also returns {'step': {target: (B, N) schedule step at which each
        position was decoded, -1 if never}, 'generated': {target: (B, n) autoregressive ids before
        merging}}.
        """
        segments = self.plan(mod_dict, schedule, top_k, top_p)
        if priorities is not None and len(priorities) != len(schedule):
            raise ValueError(f"priorities: {len(priorities)} entries for {len(schedule)} schedule steps")
        state = md.copy(mod_dict)
        for name, d in state.items():
            if modalities.get(name).kind is Kind.IMAGE_TOKENS:
                d["tensor"] = d["tensor"].reshape(d["tensor"].shape[0], -1)
        key = jax.random.key(seed) if key is None else key
        trace = {"step": {}, "generated": {}}
        for segment in segments:
            start = time.perf_counter()
            if segment.scheme == "autoregressive":
                self._run_sequence(state, segment, key, top_k, top_p, trace)
            else:
                self._run_image(state, segment, key, top_k, top_p, priorities, trace)
            if verbose:
                print(f"steps {segment.first_step}..{segment.first_step + len(segment.num_tokens) - 1}: "
                      f"{segment.target} ({segment.scheme}) {time.perf_counter() - start:.2f} s")
        return (state, trace) if return_trace else state

    def _inputs(self, state, target):
        """The arrays a segment reads: the model's input domains and the target, on the devices."""
        names = [name for name in state if name in self.model.encoder_embeddings or name == target]
        keys = ("tensor", "input_mask", "target_mask")
        arrays = {name: {k: state[name][k] for k in keys} for name in names}
        if self.mesh is None:
            return jax.tree.map(jnp.asarray, arrays)
        return jax.device_put(arrays, self._batch_sharding)

    def _call(self, fn, *args, **kwargs):
        if self.mesh is None:
            return fn(*args, **kwargs)
        with jax.set_mesh(self.mesh), sharding.axis_rules(self.rules):
            return fn(*args, **kwargs)

    def _run_image(self, state, segment: Segment, key, top_k, top_p, priorities, trace):
        """The segment's steps in up to shape_buckets compiled loops, each sized for its own steps:
        MaskGIT queries the targets remaining at its start, the encoder takes the tokens visible
        by its last step. Every step commits exactly its num_tokens in every row (plan() checks
        that they remain), so both sizes follow from the schedule and each loop is dispatched on
        the previous one's device arrays, without waiting for them."""
        target = state[segment.target]
        n = target["tensor"].shape[1]
        remaining = int((~target["target_mask"][0]).sum())
        inputs = self._inputs(state, segment.target)
        count = len(segment.num_tokens)
        buckets = min(self.shape_buckets, count)
        bounds = [round(i * count / buckets) for i in range(buckets + 1)]
        step_of = None
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
            steps = range(segment.first_step + lo, segment.first_step + hi)
            tokens = segment.num_tokens[lo:hi]
            given = None
            if priorities is not None and any(priorities[s] is not None for s in steps):
                given = jnp.asarray(np.stack([_priority(priorities[s], n, s) for s in steps]))
            if segment.scheme == "maskgit":
                num_queries = remaining - sum(segment.num_tokens[:lo])
            else:
                num_queries = max(tokens)
            weights = np.asarray(segment.weights[lo:hi], np.float32).reshape(hi - lo, len(segment.passes) - 1)
            temperatures = segment.temperatures[lo:hi]
            committed = sum(segment.num_tokens[:hi - 1])  # by the bucket's last step
            budget = self._encoder_budget(state, segment.target, segment.passes, committed)
            tensor, input_mask, target_mask, bucket_step_of = self._call(
                _image_segment, self.graphdef, self.state, inputs, key,
                jnp.asarray(tokens, jnp.int32), jnp.asarray(temperatures, jnp.float32), jnp.asarray(weights),
                given, jnp.asarray(steps.start, jnp.int32), target=segment.target, scheme=segment.scheme,
                passes=segment.passes, num_queries=max(num_queries, 1),
                num_encoder_tokens=budget, top_k=top_k, top_p=top_p, sampling=_sampling(temperatures))
            inputs[segment.target] = dict(tensor=tensor, input_mask=input_mask, target_mask=target_mask)
            step_of = bucket_step_of if step_of is None else jnp.maximum(step_of, bucket_step_of)
        target.update(tensor=np.asarray(tensor), input_mask=np.asarray(input_mask),
                      target_mask=np.asarray(target_mask))
        previous = trace["step"].get(segment.target)
        step_of = np.asarray(step_of)
        trace["step"][segment.target] = step_of if previous is None else np.maximum(previous, step_of)

    def _run_sequence(self, state, segment: Segment, key, top_k, top_p, trace):
        target = state[segment.target]
        num_targets = int((~target["target_mask"][0]).sum())
        max_new = min(modalities.get(segment.target).max_tokens, num_targets)
        out, length = self._call(
            _sequence_segment, self.graphdef, self.state, self._inputs(state, segment.target),
            jax.random.fold_in(key, segment.first_step), jnp.asarray(segment.temperatures[0], jnp.float32),
            jnp.asarray(segment.weights[0], jnp.float32).reshape(len(segment.passes) - 1),
            target=segment.target, passes=segment.passes, num_targets=num_targets, max_new_tokens=max_new,
            num_encoder_tokens=self._encoder_budget(state, segment.target, segment.passes, 0),
            top_k=top_k, top_p=top_p, sampling=_sampling(segment.temperatures))
        generated = np.asarray(out)[:, :int(length)]
        trace["generated"][segment.target] = generated
        state[segment.target] = merge_sequences(target, generated)


def _sampling(temperatures: Sequence[float]) -> str:
    """'greedy' or 'draw' when every temperature of a loop agrees, else 'either' (decided per step)."""
    greedy = [abs(t) <= GREEDY_TEMPERATURE for t in temperatures]
    return "greedy" if all(greedy) else "draw" if not any(greedy) else "either"


def _priority(values, n: int, step: int) -> np.ndarray:
    if values is None:
        raise ValueError(f"priorities[{step}]: steps of one segment need priorities for all or none of "
                         "them")
    values = np.asarray(values, np.float32)
    if values.shape != (n,):
        raise ValueError(f"priorities[{step}]: shape {values.shape}, expected ({n},)")
    return values


def _check_tensor(domain: str, modality, tensor: np.ndarray) -> None:
    where = f"mod_dict[{domain!r}]['tensor']"
    if modality.kind is Kind.IMAGE_PIXELS:
        expected = (modality.num_channels, modality.input_size, modality.input_size)
        if tensor.ndim != 4 or tensor.shape[1:] != expected:
            raise ValueError(f"{where}: shape {tensor.shape}, expected (B, {', '.join(map(str, expected))}): "
                             f"{domain} takes {modality.input_size}x{modality.input_size} images")
    elif modality.kind is Kind.IMAGE_TOKENS:
        n = modality.grid_size**2
        if tensor.ndim < 2 or int(np.prod(tensor.shape[1:])) != n:
            raise ValueError(f"{where}: shape {tensor.shape}, expected (B, {n}) tokens "
                             f"({modality.grid_size}x{modality.grid_size} grid)")
    elif tensor.ndim != (3 if modality.kind is Kind.SEQUENCE_EMBEDDING else 2):
        raise ValueError(f"{where}: shape {tensor.shape}, expected (B, L"
                         f"{', E' if modality.kind is Kind.SEQUENCE_EMBEDDING else ''})")
    if modality.kind in (Kind.IMAGE_TOKENS, Kind.SEQUENCE) and tensor.size:
        if not np.issubdtype(tensor.dtype, np.integer):
            raise ValueError(f"{where}: token ids must be integers, got {tensor.dtype}")
        low, high = int(tensor.min()), int(tensor.max())
        if low < 0 or high >= modality.vocab_size:
            raise ValueError(f"{where}: ids must be in [0, {modality.vocab_size}), found {low}..{high}")

