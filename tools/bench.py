"""Benchmarks; each prints one JSON object on stdout.

    python tools/bench.py <benchmark> [options]

Each benchmark lives in tools/bench_<name>.py and defines `add_arguments(parser)` and
`run(args) -> dict`. Only the benchmark that runs is imported, so each needs only its own
dependencies (a GPU machine without the data stack can run `model` or `generate`). Numbers carry
the machine they were measured on (`machine` field).
"""

import argparse
import ast
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


def _summary(name: str) -> str:
    """First line of a benchmark's module docstring, read without importing it."""
    source = (pathlib.Path(__file__).parent / f"bench_{name}.py").read_text()
    return (ast.get_docstring(ast.parse(source)) or "").splitlines()[0]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    sys.path.insert(0, str(pathlib.Path(__file__).parent))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="benchmark", required=True)
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name in BENCHMARKS:
        options = sub.add_parser(name, help=_summary(name))
        if name == chosen:
            module = importlib.import_module(f"bench_{name}")
            module.add_arguments(options)
    args = parser.parse_args(argv)
    result = module.run(args)
    print(json.dumps(dict(benchmark=args.benchmark, machine=machine(), **result), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
