"""Pretokenization of a tiny 64 px scenes dataset with tiny random tokenizers: token grids equal
encoding each crop directly, fields copied through, resume after SIGKILL gives the uninterrupted
output, and the pipeline reads the result with the scenes 4M mixture."""

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

from fourm_jax import configs
from fourm_jax.data import pipeline, pretokenize, records, scenes_dataset, transforms
from fourm_jax.data.errors import DataError
from fourm_jax.tokenizers import VQVAE, NetConfig, TokenizerConfig, artifacts, inputs
from tests.conftest import SHARED_DIR

pytestmark = pytest.mark.xdist_group("pretokenize")  # one worker: the encoders compile once

SIZE, CROPS = 64, 3
VIT = NetConfig("vit", 32, 1, 2)
FIELDS = {"rgb": dict(modality="rgb", n_channels=3, codebook_size=1024),
          "depth": dict(modality="depth", n_channels=1, codebook_size=512),
          "normal": dict(modality="normal", n_channels=3, codebook_size=512),
          "semseg": dict(modality="semseg", n_channels=8, n_labels=7, codebook_size=256)}
VOCAB = str(SHARED_DIR / "vocab" / "text_tokenizer_4m_wordpiece_30k.json")


@pytest.fixture(scope="module")
def scenes_dir(tmp_path_factory):
    return scenes_dataset.build(tmp_path_factory.mktemp("data"), num_train=24, num_validation=4,
                                image_size=SIZE, shard_size=12, progress=False)


@pytest.fixture(scope="module")
def tokenizer_dirs(tmp_path_factory):
    """Tiny randomly initialised tokenizers saved as artifacts (as train_tokenizer exports them)."""
    root = tmp_path_factory.mktemp("tokenizers")
    for seed, (field, settings) in enumerate(FIELDS.items()):
        tok = VQVAE(TokenizerConfig(image_size=SIZE, patch_size=8, encoder=VIT, decoder=None, latent_dim=8,
                                    **settings))
        artifacts.save(root / field, tok, jax.device_get(tok.init(jax.random.key(seed))),
                       dict(field=field, image_size=SIZE), {})
    return root


def make_pretokenizer(tokenizer_dirs, batch_size=16):
    jobs = []
    for field in FIELDS:
        tok, variables = artifacts.load_tokenizer(tokenizer_dirs / field)
        jobs.append(pretokenize.Job(field, f"tok_{field}@{SIZE}", tok, variables))
    return pretokenize.Pretokenizer(jobs, n_crops=CROPS, min_crop_scale=0.5, seed=1, batch_size=batch_size)


@pytest.fixture(scope="module")
def pretokenized(scenes_dir, tokenizer_dirs, tmp_path_factory):
    """(pretokenizer, output directory) of an uninterrupted run over train and validation."""
    pretokenizer = make_pretokenizer(tokenizer_dirs)
    out = pretokenizer.write(lambda split: records.open_dataset(scenes_dir, split), ["train", "validation"],
                             tmp_path_factory.mktemp("out") / "scenes_tok", drop=["scene"], shard_size=2,
                             source_name=str(scenes_dir), progress=False)
    return pretokenizer, out


def test_token_grids_are_the_encoded_crops(scenes_dir, pretokenized):
    pretokenizer, out = pretokenized
    source, result = records.open_dataset(scenes_dir, "train"), records.open_dataset(out, "train")
    assert len(result) == 24 and len(records.open_dataset(out, "validation")) == 4
    assert result.info.metadata["class_names"] == source.info.metadata["class_names"]
    assert result.info.metadata["pretokenize"]["n_crops"] == CROPS
    for index in (0, 13):
        original, record = source[index], result[index]
        settings = record["crop_settings"]
        assert settings.shape == (CROPS, 5) and settings.dtype == np.int32
        np.testing.assert_array_equal(settings[0], [0, 0, SIZE, SIZE, 0])  # the centre crop, unflipped
        np.testing.assert_array_equal(record["image_size"], [SIZE, SIZE])
        for job in pretokenizer.jobs:
            grid = record[job.output]
            assert grid.dtype == np.int16 and grid.shape == (CROPS, 64)
            modality = job.tokenizer.config.modality
            crops = np.stack([transforms.crop_image(modality, original[job.field], row, SIZE, job.field)
                              for row in settings])
            expected = job.tokenizer.encode(job.variables, inputs.normalize(modality, crops))
            np.testing.assert_array_equal(grid, np.asarray(expected).reshape(CROPS, 64))
        for field in ("rgb", "depth", "normal", "semseg", "caption", "metadata", "color_palette"):
            np.testing.assert_equal(record[field], original[field])
        np.testing.assert_equal(record["det"], original["det"])
        assert "scene" not in record
    rows = np.stack([result[i]["crop_settings"][1:] for i in range(len(result))]).reshape(-1, 5)
    assert set(rows[:, 4]) == {0, 1} and (rows[:, 2] < SIZE).any()  # random crops, some flipped


def test_pipeline_reads_pretokenized_scenes_with_the_scenes_mixture(pretokenized):
    """Batches hold, per example, the token rows of one crop for every modality and the RGB pixels
    cut to that same crop."""
    _, out = pretokenized
    config = pipeline.PipelineConfig(
        datasets=(pipeline.DatasetConfig("scenes", str(out), configs.load("configs/mixtures/scenes.py")),),
        global_batch_size=8, text_tokenizer=VOCAB, shuffle=False)
    batch = next(iter(pipeline.host_dataset(config)))
    assert set(batch) == {"rgb@64", "tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64",
                          "caption", "det"}
    source = records.open_dataset(out, "train")
    chosen = []
    for b in range(8):  # without shuffling, example b is record b
        record = source[b]
        candidates = set(range(CROPS))
        for name in ("tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64"):
            tensor = batch[name]["tensor"][b]
            candidates &= {c for c in range(CROPS) if np.array_equal(record[name][c], tensor)}
        assert candidates, f"example {b}: token grids from different crops"
        pixels = batch["rgb@64"]["tensor"][b]
        settings = record["crop_settings"]
        crops = [transforms.rgb_pixels(record["rgb"], settings[c], 64, "rgb") for c in candidates]
        assert any(np.allclose(pixels, crop, atol=1e-6) for crop in crops)
        chosen.append(min(candidates))
    assert set(chosen) != {0}  # random crops are drawn, not only the centre one
    assert batch["caption"]["tensor"].shape == (8, 2 * (256 + 1)) and batch["caption"]["tensor"].any()


def test_bad_inputs_are_named(scenes_dir, tokenizer_dirs, pretokenized, tmp_path):
    pretokenizer, out = pretokenized
    with pytest.raises(ValueError, match="other settings.*n_crops"):
        other = pretokenize.Pretokenizer(pretokenizer.jobs, n_crops=2, min_crop_scale=0.5, seed=1,
                                         batch_size=16)
        other.write(lambda split: records.open_dataset(scenes_dir, split), ["train", "validation"], out,
                    drop=["scene"], shard_size=2, source_name=str(scenes_dir), progress=False)
    with pytest.raises(ValueError, match="already has.*crop_settings"):
        pretokenizer.write(lambda split: records.open_dataset(out, split), ["train"], tmp_path / "again",
                           progress=False)
    with pytest.raises(DataError, match="'depth'.*missing.*tok_depth@64") as info:
        pretokenizer.tokenize([{"rgb": np.zeros((SIZE, SIZE, 3), np.uint8), "_file": "f.array_record",
                                "_index": 3}], "train", 0)
    assert info.value.file == "f.array_record" and info.value.index == 3


def _cli(repo_dir, scenes_dir, tokenizer_dirs, out):
    return [sys.executable, str(repo_dir / "tools" / "pretokenize.py"), "--source", str(scenes_dir),
            "--tokenizers", ",".join(str(tokenizer_dirs / f) for f in FIELDS), "--out", str(out),
            "--n_crops", str(CROPS), "--min_crop_scale", "0.5", "--seed", "1", "--batch_size", "16",
            "--shard_size", "2", "--drop", "scene", "--no-progress"]


def test_resume_after_sigkill_equals_an_uninterrupted_run(repo_dir, scenes_dir, tokenizer_dirs, pretokenized,
                                                          tmp_path):
    _, uninterrupted = pretokenized
    out = tmp_path / "killed"
    env = dict(os.environ, JAX_PLATFORMS="cpu")  # conftest's 8 simulated devices are inherited
    process = subprocess.Popen(_cli(repo_dir, scenes_dir, tokenizer_dirs, out), env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None and not list(out.glob("*-train.array_record-*")):
        time.sleep(0.005)
    assert process.poll() is None, process.stderr.read().decode()[-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = sorted(p.name for p in out.glob("*-train.array_record-*"))
    assert 1 <= len(finished) < 12 and not (out / "dataset_info.json").exists()
    result = subprocess.run(_cli(repo_dir, scenes_dir, tokenizer_dirs, out), env=env, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    for split in ("train", "validation"):
        a, b = records.open_dataset(uninterrupted, split), records.open_dataset(out, split)
        assert len(a) == len(b)
        for index in range(len(a)):
            left, right = a[index], b[index]
            for record in (left, right):
                del record["_file"], record["_index"]
            np.testing.assert_equal(left, right)


def test_image_folder_source(tokenizer_dirs, tmp_path):
    """ml-4m's folder layout: every modality folder becomes a field, features inferred."""
    rng = np.random.default_rng(0)
    root = tmp_path / "folder"
    images = {}
    for key in ("a/0001", "a/0002", "b/0003"):
        images[key] = rng.integers(0, 256, (48, 80, 3), dtype=np.uint8)
        for folder in ("rgb", "caption", "metadata"):
            (root / "train" / folder / key).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[key]).save(root / "train" / "rgb" / f"{key}.png")
        (root / "train" / "caption" / f"{key}.txt").write_text(f"caption of {key}")
        (root / "train" / "metadata" / f"{key}.json").write_text(json.dumps({"key": key}))
    tok, variables = artifacts.load_tokenizer(tokenizer_dirs / "rgb")
    pretokenizer = pretokenize.Pretokenizer([pretokenize.Job("rgb", "tok_rgb@64", tok, variables)], n_crops=2,
                                            batch_size=8)
    out = pretokenizer.write(lambda split: pretokenize.open_source(f"image_folder:{root}", split), ["train"],
                             tmp_path / "out", progress=False)
    result = records.open_dataset(out, "train")
    assert len(result) == 3
    record = result[2]
    np.testing.assert_array_equal(record["rgb"], images["b/0003"])
    assert record["caption"] == "caption of b/0003" and record["metadata"] == {"key": "b/0003"}
    np.testing.assert_array_equal(record["image_size"], [48, 80])
    np.testing.assert_array_equal(record["crop_settings"][0], [0, 16, 48, 48, 0])  # centre square
    assert record["tok_rgb@64"].shape == (2, 64)
