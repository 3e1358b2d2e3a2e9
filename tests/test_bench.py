"""tools/bench.py: every benchmark plugin imports and registers its options."""

import importlib
import pathlib

import pytest

TOOLS = pathlib.Path(__file__).parents[1] / "tools"
NAMES = sorted(p.stem.removeprefix("bench_") for p in TOOLS.glob("bench_*.py"))


@pytest.fixture
def bench(repo_dir, monkeypatch):
    monkeypatch.syspath_prepend(str(repo_dir / "tools"))
    return importlib.import_module("bench")


def test_help_lists_every_benchmark(bench, capsys):
    assert {"data", "generate", "masking", "model", "tokenize"} <= set(bench.BENCHMARKS)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for name in bench.BENCHMARKS:
        assert name in listed


@pytest.mark.parametrize("name", NAMES)
def test_each_benchmark_loads_its_options(bench, name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench.main([name, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out
    module = importlib.import_module(f"bench_{name}")
    assert callable(module.run) and callable(module.add_arguments)
