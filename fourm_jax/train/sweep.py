"""Scaling sweeps: a grid of ordinary training runs, each in its own workdir, and one results table.

A sweep config (configs/scaling/*.py, `get_config()`) is a ConfigDict with:

    base             a run config (fourm_jax/train/config.py) that every point starts from: data,
                     optimizer, mesh, and the one held-out evaluation (eval.data with its fixed
                     masking seeds and token budgets) that makes the points' losses comparable
    models           {name: ModelConfig overrides}, e.g. {"d128": dict(dim=128, encoder_depth=2,
                     decoder_depth=2, num_heads=4)}
    tokens           training-token budgets D (nominal encoder + decoder tokens): every model
                     trains on every D; or
    flops            compute budgets C (IsoFLOP): every model trains for C / (its FLOPs per step)
                     steps. Exactly one of `tokens` and `flops` is non-empty.
    lr               {base_lr, reference_dim, exponent}: a point's optimizer.base_lr is
                     base_lr * (reference_dim / dim) ** exponent (exponent 0: one rate for all)
    warmup_fraction  warmup steps as a fraction of the point's steps
    min_steps        points that would train for fewer steps are left out (and listed)

`WORKDIR/runs/<point>/` is the point's training workdir (fourm_jax/train/trainer.py: killed runs
resume from their checkpoints); `result.json` beside its checkpoints marks it finished, so a rerun
skips it. `WORKDIR/results.csv` and `results.jsonl` hold one row per finished point in the column
layout of fourm_jax/scaling/table.py (run, params, params_with_embeddings, tokens, flops,
wall_time_s, loss, loss/<modality>), ready for `tools/scaling_laws.py fit`.

With jobs > 1, points train concurrently as subprocesses (`python -m fourm_jax.train.sweep`), each
on its own devices: `devices_per_job` host devices on CPU, and the matching CUDA_VISIBLE_DEVICES
slice on GPUs. On a TPU slice, run one point at a time over the whole slice: every host runs the
sweep (workdir on a shared filesystem); process 0 writes the results.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import math
import os
import pathlib
import re
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections
from jax.experimental import multihost_utils

from fourm_jax.configs import ConfigError
from fourm_jax.files import write_atomic
from fourm_jax.scaling import flops as flops_lib
from fourm_jax.train import metrics, trainer
from fourm_jax.train.config import RunConfig

RESULT_FILE = "result.json"
POINT_FILE = "sweep_point.json"
RUNS_DIR = "runs"
# trainer.train's signature: (run config, workdir) -> summary of the last logged metrics
TrainFn = Callable[[ml_collections.ConfigDict, pathlib.Path], Mapping[str, Any]]
SWEEP_FIELDS = ("base", "models", "tokens", "flops", "lr", "warmup_fraction", "min_steps")


@dataclasses.dataclass(frozen=True)
class Point:
    """One run of the sweep: its name, its full run config, and what it will train on."""

    name: str
    model: str
    config: ml_collections.ConfigDict
    steps: int
    tokens: int  # D: nominal encoder + decoder tokens over the run
    flops: float  # C: analytic model FLOPs over the run (forward + backward)
    params: int  # N without embeddings
    params_with_embeddings: int


def _budget_label(value: float) -> str:
    """3 significant digits, short exponents: 768 -> '768', 2304 -> '2.3e3', 1.5e-7 -> '1.5e-7'."""
    return re.sub(r"e([+-])0*(\d)", lambda m: f"e{m[1].replace('+', '')}{m[2]}", f"{value:.3g}")


def _check_sweep(sweep: ml_collections.ConfigDict) -> None:
    unknown = sorted(set(sweep.keys()) - set(SWEEP_FIELDS))
    if unknown:
        raise ConfigError(f"sweep: unknown field(s) {unknown}; known: {list(SWEEP_FIELDS)}")
    if "base" not in sweep or not sweep.get("models"):
        raise ConfigError("sweep: needs a `base` run config and at least one entry in `models`")
    tokens, flops = list(sweep.get("tokens", ()) or ()), list(sweep.get("flops", ()) or ())
    if bool(tokens) == bool(flops):
        raise ConfigError("sweep: set exactly one of `tokens` (token budgets) and `flops` (IsoFLOP "
                          f"budgets); got tokens={tokens}, flops={flops}")
    for field, values in (("tokens", tokens), ("flops", flops)):
        for value in values:
            if not (isinstance(value, int | float) and value > 0):
                raise ConfigError(f"sweep.{field}: budgets must be positive numbers, got {value!r}")
    lr = sweep.get("lr", {})
    missing = [key for key in ("base_lr", "reference_dim", "exponent") if key not in lr]
    if missing:
        raise ConfigError(f"sweep.lr: missing {missing} (base_lr * (reference_dim / dim) ** exponent)")
    fraction = sweep.get("warmup_fraction", 0.0)
    if not 0 <= fraction < 1:
        raise ConfigError(f"sweep.warmup_fraction: must be in [0, 1), got {fraction!r}")


def points(sweep: ml_collections.ConfigDict) -> tuple[list[Point], list[str]]:
    """The sweep's runs, in grid order, and the names of those left out as shorter than min_steps."""
    _check_sweep(sweep)
    tokens_budgets = list(sweep.get("tokens", ()) or ())
    budgets = tokens_budgets or list(sweep.flops)
    result, dropped = [], []
    for model_name, overrides in sweep.models.items():
        model_config = copy.deepcopy(sweep.base)
        unknown = sorted(set(overrides.keys()) - set(model_config.model.keys()))
        if unknown:
            raise ConfigError(f"sweep.models.{model_name}: unknown model field(s) {unknown}")
        model_config.model.update(dict(overrides))
        model_config.train.update(total_steps=1, warmup_steps=0, total_tokens=0.0, warmup_tokens=0.0)
        run = RunConfig.from_config(model_config)  # validates the model against the base
        flops_per_step = trainer.model_flops_per_step(run)
        counts = flops_lib.param_counts(run.model, tie_output_embeddings=run.model.tie_output_embeddings)
        lr = sweep.lr.base_lr * (sweep.lr.reference_dim / run.model.dim) ** sweep.lr.exponent
        for budget in budgets:
            if tokens_budgets:
                steps = round(budget / run.tokens_per_step)
                name = f"{model_name}_D{_budget_label(budget)}"
            else:
                steps = round(budget / flops_per_step)
                name = f"{model_name}_C{_budget_label(budget)}"
            if steps < max(1, sweep.get("min_steps", 1)):
                dropped.append(name)
                continue
            config = copy.deepcopy(model_config)
            config.name = name
            config.train.update(total_steps=steps,
                                warmup_steps=math.floor(sweep.get("warmup_fraction", 0.0) * steps))
            # The cosine floor keeps its ratio to the peak rate.
            config.optimizer.update(base_lr=lr,
                                    min_base_lr=run.optimizer.min_base_lr * lr / run.optimizer.base_lr)
            result.append(Point(name=name, model=model_name, config=config, steps=steps,
                                tokens=steps * run.tokens_per_step, flops=steps * flops_per_step,
                                params=counts.non_embedding, params_with_embeddings=counts.total))
    names = [p.name for p in result]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"sweep: budgets too close to tell apart in run names: {duplicates}")
    return result, dropped


def _config_json(config: ml_collections.ConfigDict) -> dict:
    return json.loads(config.to_json_best_effort())


def train_seconds(records: list[dict]) -> float:
    """Training time of a run from its metrics (step time x steps, compilation and evaluation
    excluded), summed over every invocation that produced it."""
    seconds, previous = 0.0, 0
    for record in records:
        if "step_time_s" in record:
            seconds += record["step_time_s"] * (record["step"] - previous)
            previous = record["step"]
    return seconds


def _row(point: Point, workdir: pathlib.Path) -> dict[str, Any]:
    """The point's table row, from its metrics log (the held-out evaluation at its last step)."""
    records = metrics.read_jsonl(workdir / metrics.JSONL_FILE)
    final = [r for r in records if r["step"] == point.steps and "eval/loss" in r]
    if not final:
        raise RuntimeError(f"sweep point {point.name}: no held-out evaluation at step {point.steps} in "
                           f"{workdir / metrics.JSONL_FILE} (base.eval.every_steps and base.eval.data "
                           "must be set)")
    losses = {key[len("eval/"):]: value for key, value in final[-1].items()
              if key == "eval/loss" or key.startswith("eval/loss/")}
    return dict(run=point.name, model=point.model, params=point.params,
                params_with_embeddings=point.params_with_embeddings, tokens=point.tokens,
                flops=point.flops, steps=point.steps, wall_time_s=train_seconds(records), **losses)


def _finished(point: Point, workdir: pathlib.Path) -> dict | None:
    path = workdir / RESULT_FILE
    if not path.exists():
        return None
    result = json.loads(path.read_text())
    if result.get("config") != _config_json(point.config):
        raise ConfigError(f"sweep point {point.name}: {path} was trained with another config; use a "
                          "new sweep workdir or delete that run")
    return result["row"]


def run_point(point: Point, workdir: pathlib.Path, train_fn: TrainFn = trainer.train) -> dict[str, Any]:
    """Trains one point (resuming it if interrupted) and marks it finished; returns its table row."""
    summary = train_fn(point.config, workdir)
    if summary.get("preempted") or summary.get("step") != point.steps:
        raise RuntimeError(f"sweep point {point.name} stopped at step {summary.get('step')} of "
                           f"{point.steps}; rerun the sweep to resume it")
    row = _row(point, workdir)
    if jax.process_index() == 0:
        result = dict(row=row, config=_config_json(point.config))
        write_atomic(workdir / RESULT_FILE, json.dumps(result, indent=1))
    multihost_utils.sync_global_devices(f"sweep point {point.name} finished")
    return row


def _child_env(slot: int, devices_per_job: int) -> dict[str, str]:
    env = dict(os.environ)
    flag = f"--xla_force_host_platform_device_count={devices_per_job}"
    env["XLA_FLAGS"] = " ".join([f for f in env.get("XLA_FLAGS", "").split()
                                 if not f.startswith("--xla_force_host_platform_device_count")] + [flag])
    visible = env.get("CUDA_VISIBLE_DEVICES")
    gpus = visible.split(",") if visible else [str(i) for i in range((slot + 1) * devices_per_job)]
    env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[slot * devices_per_job:(slot + 1) * devices_per_job])
    return env


def _run_parallel(pending: list[tuple[Point, pathlib.Path]], jobs: int, devices_per_job: int,
                  log: Callable[[str], None]) -> None:
    waiting, running, failed = list(pending), {}, []
    while waiting or running:
        free = [slot for slot in range(jobs) if slot not in running]
        while waiting and free:
            point, workdir = waiting.pop(0)
            slot = free.pop(0)
            workdir.mkdir(parents=True, exist_ok=True)
            write_atomic(workdir / POINT_FILE, json.dumps(dataclasses.asdict(
                dataclasses.replace(point, config=_config_json(point.config))), indent=1))
            with open(workdir / "sweep.log", "ab") as out:
                process = subprocess.Popen([sys.executable, "-m", "fourm_jax.train.sweep", str(workdir)],
                                           env=_child_env(slot, devices_per_job), stdout=out,
                                           stderr=subprocess.STDOUT)
            running[slot] = (process, point, workdir)
            log(f"started {point.name} on slot {slot}")
        time.sleep(0.5)
        for slot, (process, point, workdir) in list(running.items()):
            if process.poll() is not None:
                del running[slot]
                if process.returncode:
                    failed.append(f"{point.name} (exit {process.returncode}, see {workdir / 'sweep.log'})")
                log(f"{point.name}: {'failed' if process.returncode else 'finished'}")
    if failed:
        raise RuntimeError(f"sweep points failed: {', '.join(failed)}")


def run_sweep(sweep: ml_collections.ConfigDict, workdir: str | os.PathLike, *, jobs: int = 1,
              devices_per_job: int = 1, only: tuple[str, ...] = (),
              train_fn: TrainFn = trainer.train, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Trains every unfinished point of `sweep` under `workdir` (only those named in `only`, if
    given) and writes the results table; returns its rows."""
    workdir = pathlib.Path(workdir)
    grid, dropped = points(sweep)
    if dropped:
        log(f"left out (fewer than min_steps steps): {', '.join(dropped)}")
    unknown = sorted(set(only) - {p.name for p in grid})
    if unknown:
        raise ConfigError(f"sweep: no point named {unknown}; points: {[p.name for p in grid]}")
    pending = []
    for point in grid:
        point_dir = workdir / RUNS_DIR / point.name
        if _finished(point, point_dir) is not None:
            log(f"{point.name}: finished, skipped")
        elif not only or point.name in only:
            pending.append((point, point_dir))
    log(f"{len(pending)} of {len(grid)} points to train")
    if jobs > 1:
        _run_parallel(pending, jobs, devices_per_job, log)
    else:
        for index, (point, point_dir) in enumerate(pending):
            log(f"[{index + 1}/{len(pending)}] {point.name}: {point.steps} steps, N={point.params:,}, "
                f"D={point.tokens:,}, C={point.flops:.3g}")
            run_point(point, point_dir, train_fn)
    return write_table(grid, workdir)


def write_table(grid: list[Point], workdir: pathlib.Path) -> list[dict[str, Any]]:
    """results.csv and results.jsonl from the finished points (in grid order)."""
    rows = [row for p in grid if (row := _finished(p, workdir / RUNS_DIR / p.name)) is not None]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(key for row in rows for key in row)))
    writer.writeheader()
    writer.writerows(rows)
    if jax.process_index() == 0:
        write_atomic(workdir / "results.csv", text.getvalue())
        write_atomic(workdir / "results.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    return rows


def _main(point_dir: str) -> None:
    """A subprocess of a parallel sweep: trains the point saved in `point_dir`."""
    workdir = pathlib.Path(point_dir)
    saved = json.loads((workdir / POINT_FILE).read_text())
    saved["config"] = ml_collections.ConfigDict(saved["config"])
    run_point(Point(**saved), workdir)


if __name__ == "__main__":
    _main(sys.argv[1])
