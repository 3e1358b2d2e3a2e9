"""The 4M-7 / 4M-21 recipes build: their full-size train steps lower on the 8-device mesh, and (slow)
each trains a few steps with its model shrunk, 4M-21 starting from the shrunk 4M-7 run."""

import jax
import numpy as np
import pytest

from fourm_jax import configs, modalities, sharding
from fourm_jax.data import synthetic
from fourm_jax.train import step as step_lib
from fourm_jax.train import trainer
from fourm_jax.train.config import RunConfig
from fourm_jax.train.metrics import read_jsonl

RECIPES = [f"{family}.py:{size}" for family in ("4m7", "4m21") for size in ("B", "L", "XL")]
SHRINK = ("model.dim=64", "model.num_heads=4", "model.encoder_depth=1", "model.decoder_depth=1",
          "data.global_batch_size=8", "data.num_workers=0", "train.total_steps=3", "train.warmup_steps=1",
          "train.log_every=1", "train.checkpoint_every=3", "eval.every_steps=0")


def load(repo_dir, shared_dir, spec, *overrides):
    vocab = shared_dir / "vocab" / "text_tokenizer_4m_wordpiece_30k.json"
    extra = [f"data.text_tokenizer={vocab}"] + (["train.init_from="] if spec.startswith("4m21") else [])
    return configs.load(str(repo_dir / "configs" / spec), [*extra, *overrides])


@pytest.mark.parametrize("spec", ["4m7.py:B", "4m21.py:XL"])
def test_full_size_recipes_lower_on_the_mesh(repo_dir, shared_dir, spec):
    """Shapes, shardings and the step of the real model fit together (nothing is allocated)."""
    run = RunConfig.from_config(load(repo_dir, shared_dir, spec))
    program = step_lib.build_program(run, sharding.make_mesh(run.mesh))
    lowered = program.train_step.lower(program.abstract_state, program.abstract_buffers,
                                       program.abstract_batch)
    assert "bf16" in lowered.as_text()
    params = sum(x.size for x in jax.tree.leaves(program.abstract_state.params))
    assert params > (2.5e9 if "XL" in spec else 1.5e8)


@pytest.fixture(scope="module")
def synthetic_4m7(tmp_path_factory):
    """Synthetic pre-tokenized 4M-7 records (token grids, captions, boxes, JPEG RGB)."""
    return synthetic.write_pretokenized(tmp_path_factory.mktemp("synthetic") / "4m7", 32, n_crops=2,
                                        with_rgb=True, image_size=(64, 80), shard_size=32)


def shrunk(repo_dir, shared_dir, spec, data_dir, *overrides):
    config = load(repo_dir, shared_dir, spec, *SHRINK, *overrides)
    masking = "4m7.py" if spec.startswith("4m7") else "4m21.py:coyo700m"  # 4M-7 data for both
    config.data.datasets = {"synthetic": dict(
        path=str(data_dir), masking=str(repo_dir / "configs" / "mixtures" / masking))}
    return config


@pytest.mark.slow
@pytest.mark.parametrize("size", ["B", "L", "XL"])
def test_shrunk_recipes_train_and_4m21_starts_from_4m7(repo_dir, shared_dir, synthetic_4m7, tmp_path, size):
    fm7 = trainer.train(shrunk(repo_dir, shared_dir, f"4m7.py:{size}", synthetic_4m7), tmp_path / "4m7")
    assert fm7["step"] == 3 and np.isfinite(fm7["loss"])
    fm21_config = shrunk(repo_dir, shared_dir, f"4m21.py:{size}", synthetic_4m7,
                         f"train.init_from={tmp_path / '4m7'}")
    assert set(fm21_config.data.modalities) == set(modalities.MODALITIES_4M21)  # the rest come masked
    fm21 = trainer.train(fm21_config, tmp_path / "4m21")
    rows = read_jsonl(tmp_path / "4m21" / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in rows)
    assert fm21["step"] == 3 and "loss/tok_dinov2@224" in rows[0]
