"""tools/scaling_laws.py: fit and report from the command line, on our tables and published-style ones."""

import importlib.util
import json
import re

import numpy as np
import pytest

from fourm_jax.scaling.fit import Law
from tests.scaling.synthetic import CHINCHILLA, K, isoflop_runs, write_table


@pytest.fixture(scope="module")
def tool(repo_dir):
    spec = importlib.util.spec_from_file_location("scaling_laws_tool", repo_dir / "tools" / "scaling_laws.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A second loss column with other exponents, as a per-modality loss would have.
MODALITY_LAW = Law(E=1.2, A=150.0, B=300.0, alpha=0.3, beta=0.35)


def test_fit_and_report_a_published_style_table(tool, tmp_path, capsys):
    """N and C only (D = C/(6N)), JSON lines, a per-modality column: each column gets its own law."""
    n, d, c, loss = isoflop_runs(seed=4)
    rng = np.random.default_rng(5)
    modality_loss = MODALITY_LAW.loss(n, d) * (1 + 0.01 * rng.standard_normal(len(n)))
    table = write_table(tmp_path / "runs.jsonl", {"N": n, "C": c, "L": loss, "L/tok_rgb@224": modality_loss})
    out = tmp_path / "out" / "fit.json"
    assert tool.main(["fit", "--runs", str(table), "--n-col", "N", "--flops-col", "C", "--loss-col", "L",
                      "--loss-col", "L/*", "--json", str(out), "--bootstrap", "10"]) == 0
    document = json.loads(out.read_text())
    assert document["columns"] == {"n": "N", "d": None, "flops": "C", "loss": ["L", "L/tok_rgb@224"]}
    assert document["flops_per_param_token"] == K
    for column, law in (("L", CHINCHILLA), ("L/tok_rgb@224", MODALITY_LAW)):
        a3 = document["fits"][column]["approach3"]
        assert abs(a3["alpha"] - law.alpha) <= 0.05 and abs(a3["beta"] - law.beta) <= 0.05, column
        assert set(a3["intervals"]) == {"E", "A", "B", "alpha", "beta", "a", "b"}
        assert a3["a"] == pytest.approx(a3["beta"] / (a3["alpha"] + a3["beta"]))
    assert "L/tok_rgb@224: E=" in capsys.readouterr().out

    report_dir = tmp_path / "report"
    assert tool.main(["report", "--runs", str(table), "--fit", str(out), "--out", str(report_dir)]) == 0
    assert (tmp_path / "report" / "report.md").is_file() and (tmp_path / "report" / "exponents.png").is_file()


@pytest.mark.parametrize("columns, arguments, message", [
    ({"params": 1, "tokens": 1, "loss": 1}, ["--loss-col", "val_loss"], "no loss column matches 'val_loss'"),
    ({"params": 1, "loss": 1}, ["--loss-col", "loss"], "needs a D .* or a C"),
    ({"params": 1, "tokens": 1, "loss": 1}, ["--loss-col", "loss", "--n-col", "N"], "no N .*column 'N'"),
])
def test_bad_input_exits_with_a_message(tool, tmp_path, capsys, columns, arguments, message):
    n, d, c, loss = isoflop_runs(budgets=[1e19])
    values = {"params": n, "tokens": d, "loss": loss}
    table = write_table(tmp_path / "runs.csv", {k: v for k, v in values.items() if k in columns})
    assert tool.main(["fit", "--runs", str(table), "--json", str(tmp_path / "fit.json"), *arguments]) == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "fit.json").exists()


def test_too_few_runs(tool, tmp_path, capsys):
    n, d, c, loss = isoflop_runs(budgets=[1e19], sizes_per_budget=4)
    table = write_table(tmp_path / "runs.csv", {"params": n, "tokens": d, "loss": loss})
    arguments = ["fit", "--runs", str(table), "--loss-col", "loss", "--json", str(tmp_path / "f.json")]
    assert tool.main(arguments) == 2
    assert "loss column 'loss' has 4 runs" in capsys.readouterr().err
