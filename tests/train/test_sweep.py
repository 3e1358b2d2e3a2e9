"""Scaling sweeps: the grid, the learning-rate rule, skipping finished points, resuming unfinished
ones, the results table; one real sweep of two tiny runs (slow)."""

import copy
import json
import math

import ml_collections
import pytest

from fourm_jax import configs
from fourm_jax.configs import ConfigError
from fourm_jax.scaling import flops
from fourm_jax.scaling.table import load_runs
from fourm_jax.train import sweep
from fourm_jax.train.config import RunConfig
from tests.train.conftest import subprocess_env, tiny_config

MODELS = {"small": dict(dim=32, num_heads=2), "wide": dict(dim=64, num_heads=4, encoder_depth=2)}


def make_sweep(repo_dir, data_dir, **fields):
    config = ml_collections.ConfigDict()
    config.base = tiny_config(repo_dir, data_dir)
    config.base.eval.update(every_steps=10**9, num_batches=1)
    config.base.eval.data = dict(global_batch_size=8, shuffle=False,
                                 datasets=copy.deepcopy(config.base.data.datasets.to_dict()))
    config.models = MODELS
    config.tokens = [2 * 384, 6 * 384]  # 8 examples x 48 tokens per step: 2 and 6 steps
    config.flops = []
    config.lr = dict(base_lr=0.05, reference_dim=32, exponent=1.0)
    config.warmup_fraction = 0.25
    config.min_steps = 1
    for key, value in fields.items():
        config[key] = value  # replaced, not merged
    return config


@pytest.fixture()
def grid_sweep(repo_dir, tiny_data):
    return make_sweep(repo_dir, tiny_data)


def test_grid_steps_lr_and_counts(grid_sweep):
    grid, dropped = sweep.points(grid_sweep)
    assert dropped == []
    assert [p.name for p in grid] == ["small_D768", "small_D2.3e3", "wide_D768", "wide_D2.3e3"]
    for point in grid:
        run = RunConfig.from_config(point.config)
        assert run.tokens_per_step == 8 * 48
        assert point.steps == run.total_steps == point.tokens // 384
        assert run.warmup_steps == math.floor(0.25 * point.steps)
        assert run.optimizer.base_lr == pytest.approx(0.05 * 32 / run.model.dim)
        # The cosine floor keeps its ratio to the peak (the tiny run's floor equals its peak).
        assert run.optimizer.min_base_lr == pytest.approx(run.optimizer.base_lr)
        counts = flops.param_counts(run.model, tie_output_embeddings=run.model.tie_output_embeddings)
        assert (point.params, point.params_with_embeddings) == (counts.non_embedding, counts.total)
        per_step = flops.train_flops_per_step(run.model, batch_size=8, num_encoder_tokens=24,
                                              num_decoder_tokens=24)
        assert point.flops == pytest.approx(point.steps * (per_step.forward + per_step.backward))
    assert [p.steps for p in grid] == [2, 6, 2, 6]
    assert grid[2].config.model.encoder_depth == 2 and grid[0].config.model.encoder_depth == 1
    assert grid_sweep.base.model.dim == 32  # the base config is not modified


@pytest.mark.parametrize("spec, overrides", [
    ("configs/scaling/scenes_64.py", []),
    ("configs/scaling/tpu_v5e.py", ["base.data.text_tokenizer={vocab}"]),
])
def test_shipped_sweeps_expand(repo_dir, shared_dir, spec, overrides):
    vocab = shared_dir / "vocab" / "text_tokenizer_4m_wordpiece_30k.json"
    config = configs.load(str(repo_dir / spec), [o.format(vocab=vocab) for o in overrides])
    grid, dropped = sweep.points(config)
    assert dropped == [] and len(grid) == len(config.models) * len(config.tokens)
    by_model = {}
    for point in grid:
        by_model.setdefault(point.model, []).append(point)
        assert RunConfig.from_config(point.config).eval.every_steps >= point.steps  # evaluated at the end
    sizes = sorted((points[0].params, points[0].config.model.dim) for points in by_model.values())
    assert [dim for _, dim in sizes] == sorted(dim for _, dim in sizes)  # N grows with the width


def test_isoflop_budgets_and_min_steps(repo_dir, tiny_data):
    small = RunConfig.from_config(sweep.points(make_sweep(repo_dir, tiny_data))[0][0].config)
    per_step = flops.train_flops_per_step(small.model, batch_size=8, num_encoder_tokens=24,
                                          num_decoder_tokens=24)
    budget = 10 * (per_step.forward + per_step.backward)
    grid, dropped = sweep.points(make_sweep(repo_dir, tiny_data, tokens=[], flops=[budget], min_steps=5))
    assert [p.name for p in grid] == ["small_C" + sweep._budget_label(budget)]
    assert grid[0].steps == 10 and grid[0].flops == pytest.approx(budget)
    assert dropped == ["wide_C" + sweep._budget_label(budget)]  # a bigger model: fewer than 5 steps


@pytest.mark.parametrize("fields, message", [
    (dict(flops=[1e9]), "exactly one of `tokens`"),
    (dict(tokens=[]), "exactly one of `tokens`"),
    (dict(tokens=[-5]), "positive numbers"),
    (dict(models={"bad": dict(width=3)}), r"sweep.models.bad: unknown model field\(s\) \['width'\]"),
    (dict(lr=dict(base_lr=1.0)), r"sweep.lr: missing \['reference_dim', 'exponent'\]"),
    (dict(warmup_fraction=1.5), "warmup_fraction"),
    (dict(tokens=[2304, 2305]), "too close to tell apart"),
])
def test_bad_sweep_configs(repo_dir, tiny_data, fields, message):
    with pytest.raises(ConfigError, match=message):
        sweep.points(make_sweep(repo_dir, tiny_data, **fields))


def test_unknown_sweep_field(grid_sweep):
    grid_sweep.epochs = 3
    with pytest.raises(ConfigError, match=r"unknown field\(s\) \['epochs'\]"):
        sweep.points(grid_sweep)


class FakeTrainer:
    """Stands in for trainer.train: writes the metrics a run writes and returns its summary;
    `stop_at` makes a named run stop early, as a preempted run does."""

    def __init__(self, stop_at=None, evaluate=True):
        self.calls, self.stop_at, self.evaluate = [], dict(stop_at or {}), evaluate

    def __call__(self, config, workdir):
        self.calls.append((config.name, workdir))
        workdir.mkdir(parents=True, exist_ok=True)
        metrics = workdir / "metrics.jsonl"
        lines = metrics.read_text().splitlines() if metrics.exists() else []
        done = json.loads(lines[-1])["step"] if lines else 0
        end = self.stop_at.pop(config.name, config.train.total_steps)
        summary = {"step": end, "loss": 1.0, "step_time_s": 0.5}
        if end < config.train.total_steps:
            summary["preempted"] = True
        elif self.evaluate:
            summary.update({"eval/loss": 10.0 / config.model.dim, "eval/loss/tok_depth@224": 1.5})
        with metrics.open("a") as f:
            for step in range(done + 1, end + 1):
                f.write(json.dumps({**summary, "step": step} if step == end else
                                   {"step": step, "loss": 1.0, "step_time_s": 0.5}) + "\n")
        return summary


def test_skips_finished_and_resumes_unfinished_points(grid_sweep, tmp_path):
    fake = FakeTrainer(stop_at={"wide_D2.3e3": 4})
    with pytest.raises(RuntimeError, match="wide_D2.3e3 stopped at step 4 of 6; rerun the sweep"):
        sweep.run_sweep(grid_sweep, tmp_path, train_fn=fake, log=lambda _: None)
    assert [name for name, _ in fake.calls] == ["small_D768", "small_D2.3e3", "wide_D768", "wide_D2.3e3"]
    assert not (tmp_path / "runs" / "wide_D2.3e3" / sweep.RESULT_FILE).exists()

    rows = sweep.run_sweep(grid_sweep, tmp_path, train_fn=fake, log=lambda _: None)
    # Only the unfinished point trains again, in the same workdir (its earlier steps kept).
    assert fake.calls[4:] == [("wide_D2.3e3", tmp_path / "runs" / "wide_D2.3e3")]
    assert [r["run"] for r in rows] == ["small_D768", "small_D2.3e3", "wide_D768", "wide_D2.3e3"]
    assert rows[3]["wall_time_s"] == pytest.approx(6 * 0.5)
    assert rows[0]["loss"] == pytest.approx(10.0 / 32) and rows[0]["loss/tok_depth@224"] == 1.5

    sweep.run_sweep(grid_sweep, tmp_path, train_fn=fake, log=lambda _: None)
    assert len(fake.calls) == 5  # everything finished: nothing trains

    runs = load_runs(tmp_path / "results.csv", loss_columns=["loss", "loss/*"])
    grid, _ = sweep.points(grid_sweep)
    assert list(runs.n) == [p.params for p in grid]
    assert list(runs.d) == [p.tokens for p in grid]
    assert list(runs.losses["loss"]) == pytest.approx([r["loss"] for r in rows])
    jsonl = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert jsonl == rows


def test_only_and_changed_configs(grid_sweep, tmp_path):
    fake = FakeTrainer()
    sweep.run_sweep(grid_sweep, tmp_path, only=("wide_D768",), train_fn=fake, log=lambda _: None)
    assert [name for name, _ in fake.calls] == ["wide_D768"]
    with pytest.raises(ConfigError, match=r"no point named \['nope'\]"):
        sweep.run_sweep(grid_sweep, tmp_path, only=("nope",), train_fn=fake, log=lambda _: None)
    grid_sweep.lr.base_lr = 0.01  # the finished point's config no longer matches
    with pytest.raises(ConfigError, match="wide_D768: .* was trained with another config"):
        sweep.run_sweep(grid_sweep, tmp_path, train_fn=fake, log=lambda _: None)


def test_a_run_without_evaluation_is_an_error(grid_sweep, tmp_path):
    with pytest.raises(RuntimeError, match="small_D768: no held-out evaluation at step 2"):
        sweep.run_sweep(grid_sweep, tmp_path, train_fn=FakeTrainer(evaluate=False), log=lambda _: None)


def test_a_finished_run_without_its_result_file_is_completed_from_its_log(grid_sweep, tmp_path):
    """Killed after training ended but before result.json: the rerun's train() only restores
    (returning no eval metrics, as the trainer does on a finished workdir); the row comes from the log."""
    fake = FakeTrainer()
    sweep.run_sweep(grid_sweep, tmp_path, only=("small_D768",), train_fn=fake, log=lambda _: None)
    (tmp_path / "runs" / "small_D768" / sweep.RESULT_FILE).unlink()
    rows = sweep.run_sweep(grid_sweep, tmp_path, only=("small_D768",),
                           train_fn=lambda config, workdir: {"step": config.train.total_steps},
                           log=lambda _: None)
    assert rows[0]["run"] == "small_D768" and rows[0]["loss"] == pytest.approx(10.0 / 32)


@pytest.mark.slow
def test_real_sweep_in_parallel_then_skipped(repo_dir, tiny_data, tmp_path, compilation_cache, monkeypatch):
    """Two tiny points trained by the real trainer in two subprocesses (4 CPU devices each), then a
    rerun that trains nothing; held-out losses are finite and equal across the two evaluations."""
    for key, value in subprocess_env(repo_dir, compilation_cache, devices=4).items():
        monkeypatch.setenv(key, value)
    config = make_sweep(repo_dir, tiny_data, models={"small": MODELS["small"]}, tokens=[2 * 384, 4 * 384])
    config.base.mesh.update(data=-1)
    rows = sweep.run_sweep(config, tmp_path, jobs=2, devices_per_job=4, log=lambda _: None)
    assert [r["run"] for r in rows] == ["small_D768", "small_D1.54e3"]
    for row in rows:
        assert math.isfinite(row["loss"]) and 0 < row["loss"] < 20
        assert set(row) >= {"loss/tok_depth@224", "loss/tok_semseg@224", "wall_time_s", "flops"}
        metrics = [json.loads(line) for line in
                   (tmp_path / "runs" / row["run"] / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["step"] == row["steps"] and metrics[-1]["eval/loss"] == row["loss"]
    calls = []
    sweep.run_sweep(config, tmp_path, train_fn=lambda *a: calls.append(a), log=lambda _: None)
    assert calls == []
