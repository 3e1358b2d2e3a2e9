"""Trains a 4M model from a run config; resumes when the workdir holds a checkpoint.

    python tools/train.py --config=configs/4m7.py:B --workdir=runs/4m7_B [--config.train.log_every=50]

Several hosts (each runs the same command): JAX's cluster auto-detection (Cloud TPU, SLURM, Open
MPI, Kubernetes) with --multihost, or an explicit coordinator:

    python tools/train.py ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0

(JAX_COORDINATOR_ADDRESS in the environment works like --coordinator_address.)
"""

import json
import logging as std_logging
import os

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from fourm_jax.configs import ConfigError
from fourm_jax.train import trainer

_CONFIG = config_flags.DEFINE_config_file("config", None, "run config file (configs/*.py[:arg])",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (checkpoints, metrics)", required=True)
_MULTIHOST = flags.DEFINE_bool("multihost", False, "call jax.distributed.initialize() (auto-detection)")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "number of processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "this process's index")


# Libraries whose INFO lines (Orbax logs every file it writes) would drown the progress lines.
_QUIET = ("/orbax/", "/grain/", "/tensorflow_datasets/", "/tensorboardX/", "/etils/")


def _quiet_library_info(record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or not any(part in record.pathname for part in _QUIET)


def main(argv):
    del argv
    logging.get_absl_handler().addFilter(_quiet_library_info)
    if _MULTIHOST.value or _COORDINATOR.value or os.environ.get("JAX_COORDINATOR_ADDRESS"):
        # CPU hosts (tests, CPU clusters) run cross-process collectives through gloo.
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    if _CONFIG.value is None:
        raise app.UsageError("--config is required")
    try:
        summary = trainer.train(_CONFIG.value, _WORKDIR.value)
    except ConfigError as error:
        logging.error("invalid config: %s", error)
        raise SystemExit(2) from None
    if jax.process_index() == 0:
        print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    app.run(main)
