"""Two processes x 4 CPU devices on 127.0.0.1 (jax.distributed, gloo collectives) train the tiny
model with the losses of one process x 8 devices fed the same global batches, each process reading
its own shard of the data, and checkpoint + resume across processes. (The tiny run's learning rate
is constant, so a run of 4 steps resumed to 8 is a run of 8.)"""

import json
import socket
import subprocess
import sys

import numpy as np
import pytest

from tests.train.conftest import TINY_CONFIG, subprocess_env, train_command
from tests.train.test_trainer import losses

# One process x 8 devices, fed each step the concatenation of what processes 0 and 1 of 2 read
# (pipeline.host_dataset with their process index), i.e. the global batch of the 2-process run.
REFERENCE = """
import json, sys
import jax, numpy as np
from fourm_jax import configs, sharding
from fourm_jax.data import pipeline
from fourm_jax.train import step as step_lib
from fourm_jax.train.config import RunConfig
config_path, data_dir, steps, *overrides = sys.argv[1:]
run = RunConfig.from_config(configs.load(config_path, [f"data.datasets.tiny.path={data_dir}", *overrides]))
program = step_lib.build_program(run, sharding.make_mesh(run.mesh))
streams = [iter(pipeline.host_dataset(run.data, process_index=i, process_count=2)) for i in range(2)]
state, buffers = program.init(jax.random.key(run.train.seed)), program.init_buffers()
step = program.train_step.lower(program.abstract_state, program.abstract_buffers,
                                program.abstract_batch).compile()
out = []
for _ in range(int(steps)):
    parts = [next(stream) for stream in streams]
    batch = jax.tree.map(lambda *x: jax.device_put(np.concatenate(x), program.batch_sharding), *parts)
    state, metrics = step(state, buffers, batch)
    out.append(float(metrics["loss"]))
print(json.dumps(out))
"""


def _free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def _two_processes(repo_dir, cache_dir, data_dir, workdir, *overrides):
    port = _free_port()
    env = subprocess_env(repo_dir, cache_dir, devices=4)
    workers = [subprocess.Popen(train_command(data_dir, workdir, *overrides) + [
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}"],
        cwd=repo_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)]
    for worker in workers:
        try:
            _, stderr = worker.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for other in workers:
                other.kill()
            raise
        assert worker.returncode == 0, stderr[-4000:]


@pytest.fixture(scope="module")
def expected_losses(repo_dir, compilation_cache, tiny_data):
    result = subprocess.run([sys.executable, "-c", REFERENCE, TINY_CONFIG, str(tiny_data), "8"],
                            cwd=repo_dir, env=subprocess_env(repo_dir, compilation_cache),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # ~90 s: five subprocess runs
def test_two_processes_train_checkpoint_and_resume_like_one(repo_dir, compilation_cache, tiny_data,
                                                             expected_losses, tmp_path):
    workdir = tmp_path / "run"
    _two_processes(repo_dir, compilation_cache, tiny_data, workdir, "train.total_steps=4")
    data_states = sorted(p.name for p in (workdir / "checkpoints" / "4" / "data").iterdir())
    assert [n for n in data_states if n.endswith(".json")] == ["process_0-of-2.json", "process_1-of-2.json"]
    _two_processes(repo_dir, compilation_cache, tiny_data, workdir, "train.total_steps=8")
    got = losses(workdir)
    assert sorted(got) == list(range(1, 9))
    np.testing.assert_allclose([got[s] for s in range(1, 9)], expected_losses, rtol=1e-5)
