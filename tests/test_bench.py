"""tools/bench.py: every benchmark plugin imports and registers its options."""

import sys

import pytest


def test_every_benchmark_loads(repo_dir, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(repo_dir / "tools"))
    import bench

    assert {"data", "generate", "masking", "model", "tokenize"} <= set(bench.BENCHMARKS)
    with pytest.raises(SystemExit) as exit_info:
        bench.main(["--help"])
    assert exit_info.value.code == 0
    listed = capsys.readouterr().out
    for name in bench.BENCHMARKS:
        assert name in listed
        assert hasattr(sys.modules[f"bench_{name}"], "run")
