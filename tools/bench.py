"""Benchmarks; each prints one JSON object on stdout.

    python tools/bench.py <benchmark> [options]

Each benchmark lives in tools/bench_<name>.py and defines `add_arguments(parser)` and
`run(args) -> dict`. Numbers carry the machine they were measured on (`machine` field).
"""

import argparse
import importlib
import json
import os
import pathlib
import platform
import sys

BENCHMARKS = sorted(p.stem.removeprefix("bench_") for p in pathlib.Path(__file__).parent.glob("bench_*.py"))


def machine() -> dict:
    import jax

    devices = jax.devices()
    return dict(platform=jax.default_backend(), device_kind=devices[0].device_kind,
                device_count=len(devices), cpu_count=os.cpu_count(), host=platform.node(),
                python=platform.python_version(), jax=jax.__version__)


def main(argv=None) -> int:
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    modules = {}
    for name in BENCHMARKS:
        modules[name] = importlib.import_module(f"bench_{name}")
        modules[name].add_arguments(sub.add_parser(name, help=modules[name].__doc__))
    args = parser.parse_args(argv)
    result = modules[args.benchmark].run(args)
    print(json.dumps(dict(benchmark=args.benchmark, machine=machine(), **result), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
