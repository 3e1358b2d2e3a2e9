"""Starting a run from another checkpoint's parameters, as ml-4m's `--finetune` does.

ml-4m loads a checkpoint's state dict non-strictly after removing every key that contains
`.pos_emb`: parameters the new model shares with the checkpoint are copied, new ones (4M-21's
extra modalities) keep their fresh initialisation, and the optimizer starts fresh. Here the
matching is done on ml-4m's state-dict keys (fourm_jax/convert/ml4m.py), so it is independent of
either model's layer layout (scanned or not) and behaves exactly like ml-4m's rule; a key present
in both with different shapes is an error naming it.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from absl import logging
from flax import nnx

from fourm_jax.convert import ml4m
from fourm_jax.model.config import ModelConfig
from fourm_jax.model.fourm import abstract_fourm
from fourm_jax.train import checkpoint


@dataclasses.dataclass(frozen=True)
class InitReport:
    """loaded / fresh: our parameter paths copied from the checkpoint / left at their init;
    dropped: checkpoint keys removed by pattern; unused: checkpoint keys the model has no place for."""

    source: str
    loaded: tuple[str, ...]
    fresh: tuple[str, ...]
    dropped: tuple[str, ...]
    unused: tuple[str, ...]

    def summary(self) -> str:
        return (f"init_from {self.source}: {len(self.loaded)} parameters loaded, {len(self.fresh)} "
                f"freshly initialised {list(self.fresh)[:12]}{' ...' if len(self.fresh) > 12 else ''}, "
                f"{len(self.dropped)} checkpoint keys dropped by pattern, {len(self.unused)} unused "
                f"{list(self.unused)[:12]}{' ...' if len(self.unused) > 12 else ''}")


def _path_key(path) -> tuple[str, ...]:
    return tuple(str(p) for p in path)


def _lookup(tree: dict, path: tuple[str, ...]):
    node = tree
    for part in path:
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _replace(tree: dict, path: tuple[str, ...], value) -> dict:
    head, *rest = path
    return {**tree, head: _replace(tree[head], tuple(rest), value) if rest else value}


def init_params(directory: str | pathlib.Path, model_config: ModelConfig, params: dict,
                drop: Sequence[str] = ()) -> tuple[dict, InitReport]:
    """`params` (the fresh, sharded parameter tree of a model of `model_config`) with every
    parameter the checkpoint at `directory` holds copied in, except checkpoint keys containing a
    `drop` pattern. The checkpoint is read on the host; each process places its own shards."""
    source_config, source_state = checkpoint.load_params(directory, as_numpy=True)
    source_model = nnx.merge(nnx.graphdef(abstract_fourm(source_config)), source_state)
    available = {key: (shape, produce) for key, shape, _, produce in ml4m.export_tensors(source_model)}
    dropped = sorted(k for k in available if any(pattern in k for pattern in drop))
    for key in dropped:
        del available[key]
    used: set[str] = set()
    values: dict[tuple[str, ...], np.ndarray] = {}
    slots: dict[tuple[str, ...], set] = {}
    target = abstract_fourm(model_config)
    for entry in ml4m.entries(target):
        if entry.path is None or entry.key not in available:
            continue  # a zero buffer, or a key the checkpoint does not provide
        if not isinstance(ml4m.variable_at(target, entry.path), nnx.Param):
            continue  # a sin-cos table: recomputed, never loaded
        used.add(entry.key)
        path = _path_key(entry.path)
        fresh = _lookup(params, path)
        if fresh is None:
            continue  # the second name of a shared variable (mod_emb): filled through the first
        shape, produce = available[entry.key]
        if shape != entry.torch_shape:
            raise ValueError(f"init_from {directory}: {entry.key} has shape {shape} in the checkpoint, "
                             f"the model expects {entry.torch_shape}")
        slot = () if entry.layer is None else (entry.layer,)
        array = values.setdefault(path, np.zeros(fresh.shape, np.float32))
        value = ml4m.to_ours(entry, produce(), array[slot].shape)
        written = slots.setdefault(path, set())
        if slot in written:
            if not np.array_equal(array[slot], value):
                logging.warning("init_from: %s differs from the tensor already loaded into %s (tied "
                                "here); keeping the first", entry.key, "/".join(path))
            continue
        array[slot] = value
        written.add(slot)
    loaded = []
    for path, value in values.items():
        fresh = _lookup(params, path)
        stacked = next(iter(slots[path])) != ()
        layers = fresh.shape[0] if stacked else 1
        if len(slots[path]) != layers:
            raise ValueError(f"init_from {directory}: only {len(slots[path])} of {layers} layers of "
                             f"{'/'.join(path)} are in the checkpoint")
        value = value.astype(fresh.dtype)
        params = _replace(params, path, jax.make_array_from_callback(
            fresh.shape, fresh.sharding, lambda index, v=value: v[index]))
        loaded.append("/".join(path))
    all_paths = ["/".join(str(k.key) for k in p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    fresh_paths = sorted(set(all_paths) - set(loaded))
    report = InitReport(source=str(directory), loaded=tuple(sorted(loaded)), fresh=tuple(fresh_paths),
                        dropped=tuple(dropped), unused=tuple(sorted(set(available) - used)))
    return params, report
