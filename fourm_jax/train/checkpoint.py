"""Orbax checkpoints of fourm_jax: params-only checkpoints and training runs. All Orbax use is here.

Directory layout (one checkpoint = one step directory of an Orbax CheckpointManager):

    CKPT/                 a params-only checkpoint (tools/convert_checkpoint.py --to orbax writes this)
      params/             Orbax PyTree of the model state (nnx.State as a nested dict of arrays:
                          parameters and buffers, paths as in FourM, e.g. encoder/blocks/attn/qkv/kernel)
      config/             JSON: {"format": "fourm_jax/params/1", "model": ModelConfig fields}
      _CHECKPOINT_METADATA, commit_success.txt

    WORKDIR/checkpoints/  a training run (RunCheckpoints: an Orbax CheckpointManager root)
      1000/               one step: the same `params` and `config` items, plus
        opt_state/        the optax state (Orbax PyTree, sharded like the parameters)
        step/             JSON {"step": 1000}
        data/             the Grain iterator state, one JSON file per process
        run_config/       JSON: the whole run config
      2000/ ...
      1500.corrupt/       a step that failed to restore, set aside (never deleted)

`load_params` / `load_model` accept a step directory, a run root or a workdir (latest committed
step). A step counts as committed when Orbax's commit marker (commit_success.txt, written last)
is in it.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from fourm_jax.convert.ml4m import relayout
from fourm_jax.model.config import ModelConfig
from fourm_jax.model.fourm import FourM, abstract_fourm

PARAMS_ITEM = "params"
CONFIG_ITEM = "config"
RUN_CHECKPOINTS = "checkpoints"  # a workdir's checkpoint root
COMMIT_MARKER = "commit_success.txt"
FORMAT = "fourm_jax/params/1"
# ModelConfig fields that only choose how the model runs; they may differ between save and load.
EXECUTION_FIELDS = ("scan_layers", "remat_policy", "head_chunk_size", "dtype")


def params_tree(state: nnx.State | dict) -> dict:
    """What the `params` item stores: the model state (nnx.State or its pure dict) as a nested dict
    with string keys (Orbax wants strings; layer indices become '0', '1', ...)."""
    def convert(node):
        if isinstance(node, dict):
            return {str(k): convert(v) for k, v in node.items()}
        return node
    return convert(nnx.to_pure_dict(state) if isinstance(state, nnx.State) else state)


def state_from_tree(tree: dict, abstract_state: nnx.State) -> nnx.State:
    """Puts a nested dict (as params_tree makes it) back into the structure of `abstract_state`."""
    flat = {}
    for path, variable in nnx.to_flat_state(abstract_state):
        node = tree
        for part in path:
            node = node[str(part)]
        flat[path] = variable.replace(node)
    return nnx.from_flat_state(flat)


def config_json(config: ModelConfig) -> dict[str, Any]:
    values = dataclasses.asdict(config)
    values["domains_in"], values["domains_out"] = list(config.domains_in), list(config.domains_out)
    return {"format": FORMAT, "model": values}


def save_params(directory: str | pathlib.Path, state: nnx.State, config: ModelConfig) -> None:
    """Writes a params-only checkpoint to `directory` (which must not exist). Orbax writes to a
    temporary directory and renames it when complete."""
    directory = pathlib.Path(directory).absolute()
    if directory.exists():
        raise FileExistsError(f"{directory} already exists")
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        checkpointer.save(directory, ocp.args.Composite(**{
            PARAMS_ITEM: ocp.args.StandardSave(params_tree(state)),
            CONFIG_ITEM: ocp.args.JsonSave(config_json(config))}))


def committed(step_dir: pathlib.Path) -> bool:
    """Whether Orbax finished writing this step (its commit marker is written last)."""
    return (step_dir / COMMIT_MARKER).is_file()


def _step_dirs(root: pathlib.Path) -> list[tuple[int, pathlib.Path]]:
    return sorted((int(p.name), p) for p in root.glob("*") if p.name.isdigit() and p.is_dir())


def resolve(directory: str | pathlib.Path) -> pathlib.Path:
    """The step directory holding `params` and `config`: `directory` itself, or the latest committed
    step of a run root or of a workdir's `checkpoints/`."""
    directory = pathlib.Path(directory).absolute()
    if (directory / PARAMS_ITEM).is_dir() and (directory / CONFIG_ITEM).is_dir():
        return directory
    for root in (directory, directory / RUN_CHECKPOINTS):
        steps = [path for _, path in _step_dirs(root) if (path / PARAMS_ITEM).is_dir() and committed(path)]
        if steps:
            return steps[-1]
    raise FileNotFoundError(f"{directory}: not a fourm_jax checkpoint (expected {PARAMS_ITEM}/ and "
                            f"{CONFIG_ITEM}/ in it, or committed step directories holding them)")


def load_config(directory: str | pathlib.Path) -> ModelConfig:
    step_dir = resolve(directory)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(step_dir, ocp.args.Composite(**{CONFIG_ITEM: ocp.args.JsonRestore()}))
    data = restored[CONFIG_ITEM]
    if data.get("format") != FORMAT:
        raise ValueError(f"{step_dir}/{CONFIG_ITEM}: format {data.get('format')!r}, expected {FORMAT!r}")
    return ModelConfig.from_config(data["model"])


def load_params(directory: str | pathlib.Path, *, shardings: nnx.State | None = None,
                as_numpy: bool = False) -> tuple[ModelConfig, nnx.State]:
    """(saved ModelConfig, model state). Arrays land with `shardings` (an nnx.State of shardings
    for the saved layout, e.g. from sharding.state_shardings) or on the default device;
    as_numpy restores host numpy arrays (conversion tools)."""
    step_dir = resolve(directory)
    config = load_config(step_dir)
    abstract_state = nnx.state(abstract_fourm(config))

    item = params_tree(abstract_state)
    if as_numpy:
        args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), item)
    else:
        default = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        targets = jax.tree.map(lambda _: default, item) if shardings is None else params_tree(shardings)
        args = jax.tree.map(lambda _, sharding: ocp.ArrayRestoreArgs(sharding=sharding), item, targets)
    with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as checkpointer:
        restored = checkpointer.restore(step_dir, ocp.args.Composite(**{
            PARAMS_ITEM: ocp.args.PyTreeRestore(item=item, restore_args=args)}))
    return config, state_from_tree(restored[PARAMS_ITEM], abstract_state)


def load_model(directory: str | pathlib.Path, **execution) -> FourM:
    """The saved model, optionally with other execution settings (scan_layers, remat_policy,
    head_chunk_size, dtype); its parameters are unchanged."""
    unknown = sorted(set(execution) - set(EXECUTION_FIELDS))
    if unknown:
        raise ValueError(f"load_model: {', '.join(unknown)} cannot change at load time; "
                         f"allowed: {', '.join(EXECUTION_FIELDS)}")
    config, state = load_params(directory)
    model = nnx.merge(nnx.graphdef(abstract_fourm(config)), state)
    target = dataclasses.replace(config, **execution)
    if target.scan_layers != config.scan_layers:
        return relayout(model, target)
    return nnx.merge(nnx.graphdef(abstract_fourm(target)), nnx.state(model))



# -- training runs -------------------------------------------------------------------------------

OPT_STATE_ITEM = "opt_state"
STEP_ITEM = "step"
DATA_ITEM = "data"
RUN_CONFIG_ITEM = "run_config"
SET_ASIDE_SUFFIX = ".corrupt"


# Orbax's standard handlers, except that a replicated array is split across its replicas for writing
# only when each slice holds at least 1 MiB: the split costs a small compiled copy per array shape
# (seconds for a model's hundreds of small arrays) and pays only for large arrays on many hosts.
_TYPE_HANDLERS = ocp.type_handlers.create_type_handler_registry(
    (int, ocp.type_handlers.ScalarHandler()), (float, ocp.type_handlers.ScalarHandler()),
    (np.number, ocp.type_handlers.ScalarHandler()), (np.ndarray, ocp.type_handlers.NumpyHandler()),
    (jax.Array, ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=2**20)))


def _pytree_restore(abstract_tree) -> ocp.args.PyTreeRestore:
    """Restore args placing every array with the sharding of its ShapeDtypeStruct."""
    return ocp.args.PyTreeRestore(item=abstract_tree,
                                  restore_args=ocp.checkpoint_utils.construct_restore_args(abstract_tree))


class CheckpointMismatch(ValueError):
    """A readable checkpoint of a different run (model or optimizer changed): never skipped."""


@dataclasses.dataclass(frozen=True)
class Restored:
    step: int
    model_state: dict  # params + buffers, nested dict (params_tree layout)
    opt_state: Any


class _FrozenIteratorState:
    """A data iterator's state taken when the save is requested (saves complete asynchronously,
    while the iterator moves on). Grain's handler stores get_state() of non-Grain items as text."""

    def __init__(self, state: dict):
        self._state = json.dumps(state, indent=1).encode()

    def get_state(self) -> bytes:
        return self._state


def merge_trees(a: dict, b: dict) -> dict:
    """Union of two nested dicts with disjoint leaves (parameters + buffers = the model state)."""
    out = dict(a)
    for key, value in b.items():
        out[key] = merge_trees(out[key], value) if key in out and isinstance(value, dict) else value
    return out


def select_tree(tree: dict, like: dict) -> dict:
    """The part of `tree` with the structure of `like` (the parameters of a model state)."""
    return {key: select_tree(tree[key], value) if isinstance(value, dict) else tree[key]
            for key, value in like.items()}


def _shapes(tree) -> list[tuple[str, tuple[int, ...]]]:
    leaves = jax.tree_util.tree_leaves_with_path(tree, is_leaf=lambda x: x is None)
    return sorted((jax.tree_util.keystr(path), tuple(leaf.shape)) for path, leaf in leaves
                  if leaf is not None and hasattr(leaf, "shape"))


class RunCheckpoints:
    """Checkpoints of a training run under `directory` (WORKDIR/checkpoints): asynchronous saves,
    the last `keep` steps kept, restore of the latest readable step with fallback.

    A latest step that is not committed (no commit marker: the process died while writing it) or
    that fails to restore (a truncated or missing file) is renamed `<step>.corrupt` with a warning
    and the previous step is used; nothing is deleted. A step of another model or optimizer is an
    error (CheckpointMismatch), not a fallback.
    """

    def __init__(self, directory: str | pathlib.Path, *, keep: int, async_save: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        self._set_aside_uncommitted()
        handlers = {PARAMS_ITEM: ocp.PyTreeCheckpointHandler(type_handler_registry=_TYPE_HANDLERS),
                    OPT_STATE_ITEM: ocp.PyTreeCheckpointHandler(type_handler_registry=_TYPE_HANDLERS),
                    CONFIG_ITEM: ocp.JsonCheckpointHandler(), STEP_ITEM: ocp.JsonCheckpointHandler(),
                    RUN_CONFIG_ITEM: ocp.JsonCheckpointHandler(),
                    DATA_ITEM: grain.checkpoint.CheckpointHandler()}
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True)
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handlers)

    # -- saving --------------------------------------------------------------------------------

    def save(self, step: int, *, model_state: dict, model_config: ModelConfig, opt_state: Any,
             data_iterator, run_config: dict) -> None:
        """Starts saving `step` (returns once the arrays are copied off the devices; the write
        finishes in the background). data_iterator: a Grain iterator (its state is taken now)."""
        self._manager.save(step, args=ocp.args.Composite(**{
            PARAMS_ITEM: ocp.args.PyTreeSave(params_tree(model_state)),
            CONFIG_ITEM: ocp.args.JsonSave(config_json(model_config)),
            OPT_STATE_ITEM: ocp.args.PyTreeSave(opt_state),
            STEP_ITEM: ocp.args.JsonSave({"step": int(step)}),
            DATA_ITEM: grain.checkpoint.CheckpointSave(_FrozenIteratorState(data_iterator.get_state())),
            RUN_CONFIG_ITEM: ocp.args.JsonSave(run_config)}), force=True)

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()

    # -- restoring -----------------------------------------------------------------------------

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def restore_latest(self, *, model_state: dict, model_config: ModelConfig, opt_state: Any,
                       data_iterator) -> Restored | None:
        """The latest readable step, or None when there is none. model_state / opt_state: abstract
        trees (ShapeDtypeStructs with the shardings to restore onto; the mesh may differ from the
        one that saved). data_iterator: restored in place."""
        set_aside = []
        for step in reversed(self.steps()):
            self._check_matches(step, model_state, model_config, opt_state)
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(**{
                    PARAMS_ITEM: _pytree_restore(model_state),
                    OPT_STATE_ITEM: _pytree_restore(opt_state),
                    STEP_ITEM: ocp.args.JsonRestore(),
                    DATA_ITEM: grain.checkpoint.CheckpointRestore(data_iterator)}))
            except CheckpointMismatch:
                raise
            except Exception as error:  # noqa: BLE001 - any failure to read means a damaged step
                logging.warning("checkpoint step %d in %s cannot be restored (%s: %s); falling back to "
                                "the previous step", step, self.directory, type(error).__name__,
                                str(error).splitlines()[0] if str(error) else "")
                set_aside.append(self._set_aside(self.directory / str(step)))
                continue
            if int(restored[STEP_ITEM]["step"]) != step:
                raise CheckpointMismatch(f"{self.directory / str(step)}: step item says "
                                         f"{restored[STEP_ITEM]['step']}")
            return Restored(step, restored[PARAMS_ITEM], restored[OPT_STATE_ITEM])
        if set_aside:
            raise FileNotFoundError(f"{self.directory}: no checkpoint could be restored; the damaged "
                                    f"ones were kept as {[str(p) for p in set_aside]}")
        return None

    def _check_matches(self, step: int, model_state, model_config: ModelConfig, opt_state) -> None:
        step_dir = self.directory / str(step)
        try:
            metadata = self._manager.item_metadata(step)
            saved_config = ModelConfig.from_config(
                self._manager.restore(step, args=ocp.args.Composite(**{
                    CONFIG_ITEM: ocp.args.JsonRestore()}))[CONFIG_ITEM]["model"])
            saved_params, saved_opt = metadata[PARAMS_ITEM], metadata[OPT_STATE_ITEM]
        except Exception:  # noqa: BLE001 - unreadable metadata: restore fails and falls back
            return
        same = dataclasses.replace(model_config, **{f: getattr(saved_config, f) for f in EXECUTION_FIELDS})
        if same != saved_config:
            changed = [f.name for f in dataclasses.fields(ModelConfig)
                       if getattr(same, f.name) != getattr(saved_config, f.name)]
            raise CheckpointMismatch(f"{step_dir} holds another model (model fields {changed} differ "
                                     "from this config); use a new workdir")
        saved_tree = saved_params.tree if hasattr(saved_params, "tree") else saved_params
        if _shapes(saved_tree) != _shapes(params_tree(model_state)):
            raise CheckpointMismatch(f"{step_dir}: the saved parameters do not have this model's shapes")
        saved_opt_tree = saved_opt.tree if hasattr(saved_opt, "tree") else saved_opt
        if len(_shapes(saved_opt_tree)) != len(_shapes(opt_state)):
            raise CheckpointMismatch(f"{step_dir}: the saved optimizer state does not match this "
                                     "optimizer (optimizer.clip_grad or skip_nonfinite changed?)")

    def _set_aside_uncommitted(self) -> None:
        uncommitted = [path for _, path in _step_dirs(self.directory) if not committed(path)]
        _sync("fourm_jax listed checkpoints")  # every process lists before any rename
        for path in uncommitted:
            logging.warning("checkpoint %s is incomplete (no Orbax commit marker %s); setting it "
                            "aside", path, COMMIT_MARKER)
            self._set_aside(path)

    def _set_aside(self, path: pathlib.Path) -> pathlib.Path:
        """Renames a damaged step out of Orbax's sight (process 0; all processes wait)."""
        target = path.with_name(path.name + SET_ASIDE_SUFFIX)
        n = 1
        while target.exists():
            target = path.with_name(f"{path.name}{SET_ASIDE_SUFFIX}{n}")
            n += 1
        if jax.process_index() == 0:
            path.rename(target)
        _sync(f"fourm_jax set aside {path.name}")
        if hasattr(self, "_manager"):
            self._manager.reload()
        return target


def _sync(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
