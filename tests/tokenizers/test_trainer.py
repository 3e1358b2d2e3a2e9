"""The tokenizer training loop on a tiny scenes dataset: deterministic batches, exact resume after
an interruption, export and the one-call loader; the CLI killed with SIGKILL and resumed (slow)."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from PIL import Image

from fourm_jax.data import scenes_dataset
from fourm_jax.data.errors import DataError
from fourm_jax.tokenizers import artifacts, specs, trainer
from fourm_jax.train import metrics as train_metrics

pytestmark = pytest.mark.xdist_group("tokenizer_trainer")  # one worker: the compiled programs are shared

SIZE = 32
TINY = ["tokenizer.encoder.dim=32", "tokenizer.encoder.depth=1", "tokenizer.decoder.dim=32",
        "tokenizer.decoder.depth=1", "tokenizer.codebook_size=64", "image_size=32", "tokenizer.image_size=32",
        "train.batch_size=8", "train.warmup_steps=2", "train.log_every=1", "train.eval_examples=16",
        "train.eval_batch_size=8"]


RESUMED = ("train.steps=6", "train.checkpoint_every=2", "train.eval_every=3")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("scenes")
    scenes_dataset.build(directory, num_train=24, num_validation=16, image_size=SIZE, shard_size=12,
                         progress=False)
    return directory


def tiny_spec(repo_dir, data_dir, name="scenes_semseg", *more):
    return specs.load(str(repo_dir / "tokenizers" / f"{name}.py"),
                      [*TINY, f"dataset=scenes/{SIZE}px", f"data_dir={data_dir}", *more])


def quiet(_):
    pass


def logged_losses(workdir):
    rows = train_metrics.read_jsonl(workdir / "metrics.jsonl")
    return [(row["step"], row["loss"]) for row in rows if "loss" in row]


def test_batches_are_a_pure_function_of_the_step(repo_dir, data_dir):
    spec = tiny_spec(repo_dir, data_dir, "scenes_normal")
    images = trainer.ImageField(trainer.open_split(spec, "train"), "normal", "normal")
    assert images.values.shape == (24, SIZE, SIZE, 3) and images.values.dtype == np.uint8
    batch = lambda step: trainer.training_batch(images, step, 8, 16, seed=0, min_crop_scale=0.5, hflip=0.5)
    np.testing.assert_array_equal(batch(2), batch(2))
    assert batch(2).shape == (8, 16, 16, 3) and not np.array_equal(batch(2), batch(3))
    # One epoch (3 steps of 8) visits every image once: compare full-size, unflipped crops.
    whole = [trainer.training_batch(images, s, 8, SIZE, seed=0, min_crop_scale=1.0, hflip=0.0)
             for s in range(3)]
    seen = {images.values.tolist().index(x.tolist()) for x in np.concatenate(whole)}
    assert seen == set(range(24))


def test_images_from_an_image_folder(repo_dir, tmp_path):
    """format='image_folder': the field is a modality folder of ml-4m's layout (<root>/<split>/...)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    for i, image in enumerate(images):
        (tmp_path / "train" / "rgb" / "x").mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(tmp_path / "train" / "rgb" / "x" / f"{i}.png")
    spec = specs.load(str(repo_dir / "tokenizers" / "scenes_rgb.py"),
                      [*TINY, "format=image_folder", f"dataset={tmp_path}"])
    field = trainer.ImageField(trainer.open_split(spec, "train"), "rgb", "rgb")
    np.testing.assert_array_equal(field.values, images)
    Image.fromarray(images[0][:16]).save(tmp_path / "train" / "rgb" / "x" / "3.png")
    with pytest.raises(DataError, match=r"size \(16, 32, 3\) differs") as info:
        trainer.ImageField(trainer.open_split(spec, "train"), "rgb", "rgb")
    assert info.value.index == 3 and info.value.field == "rgb"


def test_interrupted_run_resumes_to_the_same_losses(repo_dir, data_dir, tmp_path):
    spec = tiny_spec(repo_dir, data_dir, "scenes_semseg", *RESUMED)
    straight = trainer.train(spec, tmp_path / "straight", log=quiet)
    first = trainer.train(spec, tmp_path / "resumed", log=quiet, stop_after=3)
    assert first.step == 3
    resumed = trainer.train(spec, tmp_path / "resumed", log=quiet)
    losses = {name: logged_losses(tmp_path / name) for name in ("straight", "resumed")}
    assert [s for s, _ in losses["straight"]] == list(range(1, 7))
    assert losses["resumed"] == losses["straight"]  # bit-identical, each step logged once
    assert set(straight.variables) == {"live", "ema"} and straight.default_kind == "ema"
    for a, b in zip(jax.tree.leaves(straight.variables), jax.tree.leaves(resumed.variables), strict=True):
        np.testing.assert_array_equal(a, b)
    assert resumed.metrics == straight.metrics and 0 < straight.metrics["ema"]["pixel_accuracy"] <= 1
    assert straight.metrics["live"] != straight.metrics["ema"] and straight.held_out_examples == 16
    with pytest.raises(ValueError, match="another spec"):
        trainer.train(tiny_spec(repo_dir, data_dir, "scenes_semseg", "train.steps=7"), tmp_path / "resumed",
                      log=quiet)


def test_export_and_load_tokenizer(repo_dir, data_dir, tmp_path):
    spec = tiny_spec(repo_dir, data_dir, "scenes_semseg", *RESUMED)
    run = trainer.train(spec, tmp_path / "run", log=quiet, stop_after=2)
    directory = artifacts.save(tmp_path / "semseg", run.tokenizer, run.variables["ema"],
                               trainer.spec_json(spec), dict(held_out=run.metrics["ema"]))
    tok, variables = artifacts.load_tokenizer(directory)
    assert tok.config == run.tokenizer.config
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(run.variables["ema"]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert artifacts.token_modality(artifacts.read_spec(directory)) == "tok_semseg@32"
    assert json.loads((directory / "quality.json").read_text())["held_out"]["miou"] > 0
    # Saving again replaces the artifact whole.
    artifacts.save(directory, tok, variables, trainer.spec_json(spec), dict(held_out={}))
    assert json.loads((directory / "quality.json").read_text()) == {"held_out": {}}
    with pytest.raises(FileNotFoundError, match="no tokenizer 'nope'.*tok_rgb@64"):
        artifacts.load_tokenizer("nope")


def _train_cli(repo_dir, data_dir, workdir, steps):
    overrides = [f"--config.{o}" for o in (*TINY, f"dataset=scenes/{SIZE}px", f"data_dir={data_dir}",
                                           f"train.steps={steps}", "train.checkpoint_every=1",
                                           "train.eval_every=100")]
    return [sys.executable, str(repo_dir / "tools" / "train_tokenizer.py"),
            f"--config={repo_dir}/tokenizers/scenes_rgb.py", f"--workdir={workdir}", *overrides]


@pytest.mark.slow
def test_cli_killed_with_sigkill_resumes_exactly(repo_dir, data_dir, tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run(_train_cli(repo_dir, data_dir, tmp_path / "straight", 12), env=env, check=True,
                   capture_output=True)
    process = subprocess.Popen(_train_cli(repo_dir, data_dir, tmp_path / "killed", 12), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = len(log.read_text().splitlines())
    assert killed_at < 12
    subprocess.run(_train_cli(repo_dir, data_dir, tmp_path / "killed", 12), env=env, check=True,
                   capture_output=True)
    losses = {name: logged_losses(tmp_path / name) for name in ("straight", "killed")}
    assert [s for s, _ in losses["straight"]] == list(range(1, 13))
    assert losses["killed"] == losses["straight"]
