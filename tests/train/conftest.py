"""Shared pieces of the trainer tests: the tiny run config, its synthetic data, subprocess runs."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from fourm_jax import configs
from fourm_jax.data import synthetic

TINY_CONFIG = "tests/train/tiny_run.py"
TINY_MODALITIES = ("tok_depth@224", "tok_semseg@224")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> pathlib.Path:
    """64 synthetic pre-tokenized records with the tiny run's modalities."""
    return synthetic.write_pretokenized(tmp_path_factory.mktemp("tiny_data") / "tiny", 64,
                                        modalities=TINY_MODALITIES, n_crops=2, shard_size=32)


def tiny_config(repo_dir, data_dir, *overrides):
    return configs.load(str(repo_dir / TINY_CONFIG), [f"data.datasets.tiny.path={data_dir}", *overrides])


@pytest.fixture(scope="session")
def compilation_cache(tmp_path_factory) -> pathlib.Path:
    """A persistent compilation cache shared by the subprocess runs of one test session (and its
    xdist workers: the directory sits beside the workers' temporary roots)."""
    path = tmp_path_factory.getbasetemp().parent / "fourm_jax_compilation_cache"
    path.mkdir(exist_ok=True)
    return path


def train_command(data_dir, workdir, *overrides, config=TINY_CONFIG) -> list[str]:
    return [sys.executable, "tools/train.py", f"--config={config}",
            f"--config.data.datasets.tiny.path={data_dir}", f"--workdir={workdir}",
            *[f"--config.{o}" for o in overrides]]


def subprocess_env(repo_dir, cache_dir, devices: int = 8) -> dict[str, str]:
    """Subprocess runs compile with LLVM optimisation off (2-3x faster compiles of these tiny
    programs; every run compared bit for bit uses the same flags) and a shared compilation cache."""
    return dict(os.environ, PYTHONPATH=str(repo_dir), JAX_PLATFORMS="cpu",
                XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} "
                          "--xla_backend_optimization_level=0",
                JAX_COMPILATION_CACHE_DIR=str(cache_dir), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")


def run_training(repo_dir, cache_dir, data_dir, workdir, *overrides, timeout=300):
    """Runs tools/train.py to completion; returns the CompletedProcess (asserting success)."""
    result = subprocess.run(train_command(data_dir, workdir, *overrides), cwd=repo_dir,
                            env=subprocess_env(repo_dir, cache_dir), capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def random_model(config, seed: int = 0):
    """A FourM whose variables hold numpy draws: distinct values without compiling the model's init
    (checkpoint and init_from tests need values, not the initialisation scheme)."""
    from fourm_jax.model.fourm import abstract_fourm

    abstract = abstract_fourm(config)
    rng = np.random.default_rng(seed)
    state = jax.tree.map(lambda v: v.replace(rng.standard_normal(v.shape).astype(np.float32)),
                         nnx.state(abstract), is_leaf=lambda x: isinstance(x, nnx.Variable))
    return nnx.merge(nnx.graphdef(abstract), state)
