"""Compiles a run's train step for a TPU slice on this machine (no TPU needed; libtpu, the `tpu`
extra, describes the slice) and prints per-device memory, FLOPs, the estimated step time, MFU and
tokens/s (fourm_jax/train/aot.py explains each figure).

    python tools/aot_compile.py --config=configs/4m7.py:B --topology=v5e:16x16 \\
        [--config.mesh.fsdp=4 --config.model.remat_policy=full ...] [--json=report.json]

Exit status: 0 when the program fits the devices' HBM, 1 when it does not (the compiler's
figures are printed), 2 when it cannot be compiled at all (bad config or topology, no libtpu).
"""

import json
import os
import sys

# Compile for the described slice only; never look for (or initialise) a local accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fourm_jax.files import write_atomic  # noqa: E402
from fourm_jax.model.config import ConfigError  # noqa: E402
from fourm_jax.train import aot  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "run config file (configs/*.py[:arg])",
                                          lock_config=True)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice as libtpu names it: v5e:16x16, v5p:4x4x4, "
                                "v6e:16x16", required=True)
_JSON = flags.DEFINE_string("json", None, "also write the report as JSON to this file")


def main(argv):
    del argv
    if _CONFIG.value is None:
        raise app.UsageError("--config is required")
    try:
        report = aot.aot_report(aot.run_config(_CONFIG.value), _TOPOLOGY.value)
    except (ConfigError, aot.AotError, ValueError) as error:
        print(f"aot_compile: {error}", file=sys.stderr)
        return 2
    print(aot.format_report(report), flush=True)
    if _JSON.value:
        write_atomic(_JSON.value, json.dumps(report, indent=2) + "\n")
    return 0 if report["memory"]["fits"] else 1


if __name__ == "__main__":
    app.run(main)
