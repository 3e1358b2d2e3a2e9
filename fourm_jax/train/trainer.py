"""The training loop: `train(config, workdir)` trains a run from its config, or resumes it.

    WORKDIR/config.json        the run config (JSON)
    WORKDIR/checkpoints/<step> Orbax checkpoints (fourm_jax/train/checkpoint.py)
    WORKDIR/metrics.jsonl      one line per logged step: loss, loss/<modality>, grad_norm, lr,
                               skipped_steps, step_time_s, tokens_per_s, mfu; eval/... at evaluations
    WORKDIR/tensorboard/       the same scalars as TensorBoard events

A workdir that holds a checkpoint is resumed from its latest readable step (parameters, optimizer
state, step and data-iterator state), so a killed and restarted run repeats an uninterrupted one
step for step. A fresh run initialises the parameters sharded on the mesh, or copies them from
`train.init_from`. Checkpoints are saved every `train.checkpoint_every` steps, at the end and on
SIGTERM (preemption; across hosts through JAX's preemption sync point), asynchronously.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import signal
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from fourm_jax import sharding
from fourm_jax.data import pipeline
from fourm_jax.files import write_atomic
from fourm_jax.scaling import flops as flops_lib
from fourm_jax.scaling import hardware
from fourm_jax.train import checkpoint, finetune
from fourm_jax.train import step as step_lib
from fourm_jax.train.config import RunConfig
from fourm_jax.train.metrics import MetricWriter, Progress

# Metrics that are state, not per-step values: the logged value is the last one.
_LAST_VALUE = ("lr", "skipped_steps")


class _Preemption:
    """SIGTERM -> save and stop. One process: a signal handler; several: JAX's preemption sync
    point (every host stops at the same step)."""

    def __init__(self):
        self._event = threading.Event()
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, lambda *_: self._event.set())

    def requested(self, step: int) -> bool:
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._event.is_set()

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _mean_metrics(pending: list[dict]) -> dict[str, float]:
    host = jax.device_get(pending)
    return {key: float(host[-1][key]) if key in _LAST_VALUE else float(np.mean([m[key] for m in host]))
            for key in host[-1]}


def evaluate(program: step_lib.TrainProgram, params: dict, buffers: dict) -> dict[str, float]:
    """Mean eval metrics over eval.num_batches batches of a fresh eval stream (same data and masks
    at every evaluation)."""
    run = program.run
    iterator = iter(pipeline.build_dataset(run.eval.data, program.batch_sharding))
    try:
        results = [program.eval_step(params, buffers, next(iterator)) for _ in range(run.eval.num_batches)]
    finally:
        iterator.close()
    return {f"eval/{key}": value for key, value in _mean_metrics(results).items()}


def _initial_state(program: step_lib.TrainProgram, checkpoints: checkpoint.RunCheckpoints,
                   data_iterator, buffers: dict) -> step_lib.TrainState:
    run = program.run
    abstract_params = program.abstract_state.params
    restored = checkpoints.restore_latest(
        model_state=checkpoint.merge_trees(abstract_params, program.abstract_buffers),
        model_config=run.model, opt_state=program.abstract_state.opt_state, data_iterator=data_iterator)
    if restored is not None:
        logging.info("resuming from %s/%d", checkpoints.directory, restored.step)
        step = jax.device_put(np.int32(restored.step), program.state_sharding.step)
        params = checkpoint.select_tree(restored.model_state, abstract_params)
        return step_lib.TrainState(step=step, params=params, opt_state=restored.opt_state)
    state = program.init(jax.random.key(run.train.seed))
    if run.train.init_from:
        params, report = finetune.init_params(run.train.init_from, run.model, state.params,
                                              run.train.init_drop)
        logging.info("%s", report.summary())
        state = state.replace(params=params)
    return state


def _log_compiled(compiled) -> None:
    try:
        memory = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        return
    if memory is not None:
        logging.info("train step per device: arguments %.1f MiB, outputs %.1f MiB, temporaries "
                     "%.1f MiB", memory.argument_size_in_bytes / 2**20,
                     memory.output_size_in_bytes / 2**20, memory.temp_size_in_bytes / 2**20)


def model_flops_per_step(run: RunConfig) -> float:
    """Model FLOPs of one step (forward + backward, no rematerialisation: MFU's numerator)."""
    counted = flops_lib.train_flops_per_step(run.model, batch_size=run.global_batch,
                                             num_encoder_tokens=run.train.num_input_tokens,
                                             num_decoder_tokens=run.train.num_target_tokens)
    return counted.forward + counted.backward


def train(config: ml_collections.ConfigDict | RunConfig, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains the run `config` in `workdir` (resuming from its latest checkpoint when it has one).
    Returns the last logged metrics (and eval metrics, if any) with the final step."""
    run = config if isinstance(config, RunConfig) else RunConfig.from_config(config)
    workdir = pathlib.Path(workdir).absolute()
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        write_atomic(workdir / "config.json", json.dumps(run.to_json(), indent=1))
    mesh = sharding.make_mesh(run.mesh)
    program = step_lib.build_program(run, mesh)
    if run.eval.data is not None:
        step_lib.check_batch_splits(run.eval.data.global_batch_size, 1, mesh, run.sharding_rules, "eval.data")
    data_iterator = iter(pipeline.build_dataset(run.data, program.batch_sharding))
    checkpoints = checkpoint.RunCheckpoints(workdir / checkpoint.RUN_CHECKPOINTS,
                                            keep=run.train.keep_checkpoints,
                                            async_save=run.train.async_checkpoints)
    preemption = _Preemption()
    writer = None
    try:
        buffers = program.init_buffers()
        state = _initial_state(program, checkpoints, data_iterator, buffers)
        start_step, total_steps = int(state.step), run.total_steps
        started = time.perf_counter()
        compiled = program.train_step.lower(program.abstract_state, program.abstract_buffers,
                                            program.abstract_batch).compile()
        logging.info("compiled the train step in %.1f s", time.perf_counter() - started)
        _log_compiled(compiled)
        writer = MetricWriter(workdir, resume_step=start_step)
        progress = Progress(total_steps, start_step)
        flops = model_flops_per_step(run)
        devices = list(mesh.devices.flat)
        summary: dict[str, Any] = {"step": start_step}
        pending, last_time, last_step = [], time.perf_counter(), start_step
        step = start_step
        while step < total_steps:
            state, metrics = compiled(state, buffers, next(data_iterator))
            pending.append(metrics)
            step += 1
            stop = preemption.requested(step)
            scalars = {}
            if step % run.train.log_every == 0 or step == total_steps or stop:
                scalars = _mean_metrics(pending)
                now = time.perf_counter()
                step_time = (now - last_time) / (step - last_step)
                pending, last_time, last_step = [], now, step
                if not math.isfinite(scalars["loss"]) and not run.optimizer.skip_nonfinite:
                    raise FloatingPointError(f"step {step}: the loss is {scalars['loss']} (set "
                                             "optimizer.skip_nonfinite to skip such steps)")
                scalars.update(step_time_s=step_time, tokens_per_s=run.tokens_per_step / step_time)
                mfu = hardware.mfu(flops, step_time, devices, dtype=run.model.dtype)
                if mfu is not None:
                    scalars["mfu"] = mfu
                if jax.process_index() == 0:
                    logging.info("%s", progress.line(step, scalars["loss"], run.tokens_per_step))
            if run.eval.every_steps and (step % run.eval.every_steps == 0 or step == total_steps):
                scalars.update(evaluate(program, state.params, buffers))
            if scalars:
                writer.write(step, scalars)
                summary.update(scalars)
            if step % run.train.checkpoint_every == 0 or step == total_steps or stop:
                checkpoints.save(step, model_state=checkpoint.merge_trees(state.params, buffers),
                                 model_config=run.model, opt_state=state.opt_state,
                                 data_iterator=data_iterator, run_config=run.to_json())
            if stop:
                logging.warning("preempted: saved step %d and stopping", step)
                summary["preempted"] = True
                break
        summary["step"] = step
        return summary
    finally:
        checkpoints.wait()
        checkpoints.close()
        preemption.close()
        data_iterator.close()
        if writer is not None:
            writer.close()

