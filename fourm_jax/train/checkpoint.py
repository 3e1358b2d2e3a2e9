"""Orbax checkpoints of fourm_jax ("orbax" kind): model parameters + the model config.

Directory layout (one checkpoint = one step directory of an Orbax CheckpointManager):

    CKPT/                 a params-only checkpoint (tools/convert_checkpoint.py --to orbax writes this)
      params/             Orbax PyTree of the model state (nnx.State as a nested dict of arrays:
                          parameters and buffers, paths as in FourM, e.g. encoder/blocks/attn/qkv/kernel)
      config/             JSON: {"format": "fourm_jax/params/1", "model": ModelConfig fields}
      _CHECKPOINT_METADATA

    RUN/                  a training run (Orbax CheckpointManager root)
      1000/               one step: the same `params` and `config` items, plus the trainer's own
        params/ config/   items (opt_state, step, data iterator state, ...) beside them
        opt_state/ ...
      2000/ ...

`load_params` / `load_model` accept either a step directory or a run root (latest step).
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from fourm_jax.convert.ml4m import relayout
from fourm_jax.model.config import ModelConfig
from fourm_jax.model.fourm import FourM, abstract_fourm

PARAMS_ITEM = "params"
CONFIG_ITEM = "config"
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


def _from_tree(tree: dict, abstract_state: nnx.State) -> nnx.State:
    """Puts a restored nested dict back into the structure of `abstract_state`."""
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


def resolve(directory: str | pathlib.Path) -> pathlib.Path:
    """The step directory holding `params` and `config`: `directory` itself or its latest step."""
    directory = pathlib.Path(directory).absolute()
    if (directory / PARAMS_ITEM).is_dir() and (directory / CONFIG_ITEM).is_dir():
        return directory
    steps = sorted((int(p.name), p) for p in directory.glob("*")
                   if p.name.isdigit() and (p / PARAMS_ITEM).is_dir())
    if steps:
        return steps[-1][1]
    raise FileNotFoundError(f"{directory}: not a fourm_jax checkpoint (expected {PARAMS_ITEM}/ and "
                            f"{CONFIG_ITEM}/ in it, or step directories holding them)")


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
    for the saved layout, e.g. from train.sharding.state_shardings) or on the default device;
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
    return config, _from_tree(restored[PARAMS_ITEM], abstract_state)


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

