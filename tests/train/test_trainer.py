"""The training loop end to end, as users run it: tools/train.py in a subprocess, killed, resumed,
moved to another mesh, with damaged checkpoints."""

import random
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest

from fourm_jax.train import checkpoint
from fourm_jax.train.metrics import read_jsonl
from tests.train.conftest import run_training, subprocess_env, train_command

TOTAL_STEPS = 8  # tiny_run.py: checkpoints every 3 steps (3, 6) and at the end (8)


def losses(workdir) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_jsonl(workdir / "metrics.jsonl")}


def logged(workdir) -> dict[int, dict[str, float]]:
    """Every logged number except timings."""
    return {row["step"]: {k: v for k, v in row.items() if k not in ("step_time_s", "tokens_per_s")}
            for row in read_jsonl(workdir / "metrics.jsonl")}


@pytest.fixture(scope="module")
def reference(repo_dir, compilation_cache, tiny_data, tmp_path_factory):
    """An uninterrupted run of the tiny config (it also fills the compilation cache)."""
    workdir = tmp_path_factory.mktemp("reference") / "run"
    run_training(repo_dir, compilation_cache, tiny_data, workdir)
    return workdir


def test_reference_run_writes_metrics_checkpoints_and_config(reference):
    rows = read_jsonl(reference / "metrics.jsonl")
    assert [row["step"] for row in rows] == list(range(1, TOTAL_STEPS + 1))
    for key in ("loss", "loss/tok_depth@224", "loss/tok_semseg@224", "grad_norm", "lr", "skipped_steps",
                "step_time_s", "tokens_per_s"):
        assert all(np.isfinite(row[key]) for row in rows), key
    assert "mfu" not in rows[0]  # CPU: no peak FLOP/s
    evals = {row["step"]: row for row in rows if "eval/loss" in row}  # tiny_run: every 4 steps
    assert sorted(evals) == [4, 8] and np.isfinite(evals[4]["eval/loss/tok_depth@224"])
    assert rows[0]["lr"] == rows[-1]["lr"] == pytest.approx(0.05 * 8 / 256)  # blr x batch / 256
    assert sorted(int(p.name) for p in (reference / "checkpoints").iterdir()) == [3, 6, 8]
    assert (reference / "config.json").is_file() and list((reference / "tensorboard").iterdir())
    assert checkpoint.resolve(reference).name == "8"  # a workdir loads as a params checkpoint
    _, state = checkpoint.load_params(reference)
    assert state["mask_token"].get_value().shape == (32,)


@pytest.mark.slow  # ~50 s: two subprocess runs; the default run resumes in the test below
def test_sigkill_at_an_arbitrary_step_then_resume_repeats_the_run_bit_for_bit(
        repo_dir, compilation_cache, tiny_data, reference, tmp_path):
    kill_after = random.Random().randint(3, TOTAL_STEPS - 1)  # after the first checkpoint (step 3)
    workdir = tmp_path / "run"
    process = subprocess.Popen(train_command(tiny_data, workdir), cwd=repo_dir,
                               env=subprocess_env(repo_dir, compilation_cache),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        committed = (workdir / "checkpoints" / "3" / checkpoint.COMMIT_MARKER).exists()
        if committed and max(losses(workdir) if (workdir / "metrics.jsonl").exists() else [0]) >= kill_after:
            break
        time.sleep(0.05)
    assert process.poll() is None, f"the run ended before step {kill_after}: {process.stderr.read()[-3000:]}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = max(losses(workdir))
    resumed = run_training(repo_dir, compilation_cache, tiny_data, workdir)
    assert "resuming from" in resumed.stderr
    # Every number, eval losses (fixed eval data and masks) included, repeats bit for bit.
    assert logged(workdir) == logged(reference), f"killed after step {killed_at}; {resumed.stderr[-2000:]}"


def test_resume_on_another_mesh_after_falling_back_past_damaged_checkpoints(
        repo_dir, compilation_cache, tiny_data, reference, tmp_path):
    """Steps 3, 6, 8 of the 8x1 run: 8 loses a data file, 6 its commit marker; the run resumes from 3
    on a 2x4 (data x fsdp) mesh, keeps the damaged steps aside and repeats the losses."""
    workdir = tmp_path / "run"
    shutil.copytree(reference, workdir)
    (workdir / "metrics.jsonl").write_text("")
    data_files = sorted(p for p in (workdir / "checkpoints" / "8" / "params").rglob("*")
                        if p.is_file() and p.parent.name == "d")
    data_files[0].unlink()
    (workdir / "checkpoints" / "6" / checkpoint.COMMIT_MARKER).unlink()
    result = run_training(repo_dir, compilation_cache, tiny_data, workdir, "mesh.data=2", "mesh.fsdp=4")
    assert "no Orbax commit marker" in result.stderr and "cannot be restored" in result.stderr
    resumed = losses(workdir)
    assert sorted(resumed) == list(range(4, TOTAL_STEPS + 1))
    expected = losses(reference)
    np.testing.assert_allclose([resumed[s] for s in resumed], [expected[s] for s in resumed], rtol=2e-6)
    names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert names == ["3", "6", "6.corrupt", "8", "8.corrupt"]
