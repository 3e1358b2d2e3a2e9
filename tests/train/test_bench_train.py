"""tools/bench_train.py: FSDP divides the per-device parameter and optimizer bytes by the fsdp size,
and the synthetic batch is a batch the train step accepts."""

import argparse

import jax
import numpy as np
import pytest

from fourm_jax import sharding
from fourm_jax.train import step as step_lib
from fourm_jax.train.config import RunConfig
from tests.train.conftest import TINY_CONFIG, tiny_config


@pytest.fixture(scope="module")
def bench(import_tool):
    return import_tool("bench_train")


def test_fsdp_shards_parameters_and_optimizer_state(bench, repo_dir, tiny_data):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--config", str(repo_dir / TINY_CONFIG), "--skip-timing", "--fsdp-devices",
                              "1,2,8", "--override", f"data.datasets.tiny.path={tiny_data}"])
    rows = {row["fsdp"]: row for row in bench.run(args)["fsdp"]}
    run = RunConfig.from_config(tiny_config(repo_dir, tiny_data))
    program = step_lib.build_program(run, sharding.make_mesh(run.mesh))
    num_params = sum(x.size for x in jax.tree.leaves(program.abstract_state.params))
    assert rows[1]["param_bytes_per_device"] == 4 * num_params  # float32, replicated
    assert rows[1]["opt_state_bytes_per_device"] >= 8 * num_params  # Adam's two moments
    for n in (2, 8):  # only small leaves (norms, biases) stay replicated
        assert rows[n]["param_bytes_per_device"] < 1.02 * rows[1]["param_bytes_per_device"] / n
        assert rows[n]["opt_state_bytes_per_device"] < 1.02 * rows[1]["opt_state_bytes_per_device"] / n


def test_synthetic_batch_matches_the_abstract_batch(bench, repo_dir, tiny_data):
    run = RunConfig.from_config(tiny_config(repo_dir, tiny_data))
    program = step_lib.build_program(run, sharding.make_mesh(run.mesh))
    batch = bench.synthetic_batch(run, program)
    assert jax.tree.map(lambda x: (x.shape, x.dtype, x.sharding), batch) == jax.tree.map(
        lambda x: (x.shape, x.dtype, x.sharding), program.abstract_batch)
    for name, arrays in batch.items():  # every example within the budgets
        assert np.all((~np.asarray(arrays["input_mask"])).sum(1) <= run.train.num_input_tokens), name
