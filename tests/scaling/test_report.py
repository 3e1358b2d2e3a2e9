import copy
import json

import pytest

from fourm_jax.scaling import fit, report
from fourm_jax.scaling.table import TableError, load_runs
from tests.scaling.synthetic import grid_runs, isoflop_runs, write_table

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _fit_document(tmp_path, design):
    n, d, c, loss = design
    columns = {"params": n, "flops": c, "loss": loss, "loss/tok_rgb@224": 0.8 * loss}
    table = write_table(tmp_path / "runs.csv", columns)
    runs = load_runs(table, loss_columns=["loss", "loss/*"])
    document = json.loads(json.dumps(fit.fit_runs(runs, bootstrap=8)))  # as read back from disk
    return runs, document


def test_report_of_an_isoflop_sweep(tmp_path):
    runs, document = _fit_document(tmp_path, isoflop_runs(seed=2))
    paths = report.write_report(runs, document, tmp_path / "report")
    names = sorted(p.name for p in paths)
    assert names == ["exponents.png", "fitted_vs_observed.png", "isoflop.png", "loss_vs_compute.png",
                     "report.md"]
    for path in paths:
        if path.suffix == ".png":
            assert path.read_bytes().startswith(PNG_SIGNATURE) and path.stat().st_size > 10_000
    text = (tmp_path / "report" / "report.md").read_text()
    alpha = document["fits"]["loss/tok_rgb@224"]["approach3"]["alpha"]
    assert "| loss/tok_rgb@224 | " in text and f"{alpha:.4g}" in text
    assert f"{document['fits']['loss']['approach2']['a']:.4g}" in text
    assert "![isoflop.png](isoflop.png)" in text
    assert not [p.name for p in (tmp_path / "report").iterdir() if p.name.startswith(".")]  # no temporaries


@pytest.fixture(scope="module")
def grid_fit(tmp_path_factory):
    return _fit_document(tmp_path_factory.mktemp("grid"), grid_runs(seed=1))


def test_report_without_isoflop_budgets(tmp_path, grid_fit):
    runs, document = grid_fit
    paths = report.write_report(runs, document, tmp_path / "report")
    assert "isoflop.png" not in [p.name for p in paths]
    text = (tmp_path / "report" / "report.md").read_text()
    assert "skipped: Approach 2 needs at least 2 compute budgets" in text


def test_runs_for_fit_uses_the_fit_columns(grid_fit):
    runs, document = grid_fit
    again = report.runs_for_fit(runs.path, document)
    assert list(again.losses) == ["loss", "loss/tok_rgb@224"] and (again.d == runs.d).all()


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"schema": "something else"}', "not a fit document"),
    (json.dumps({"schema": fit.SCHEMA, "columns": {}}), "lacks the key 'flops_per_param_token'"),
])
def test_bad_fit_documents(tmp_path, content, message):
    path = tmp_path / "fit.json"
    path.write_text(content)
    with pytest.raises(TableError, match=message):
        report.read_fit(path)


def test_report_refuses_a_fit_of_other_columns(tmp_path, grid_fit):
    runs, document = grid_fit[0], copy.deepcopy(grid_fit[1])
    del document["fits"]["loss/tok_rgb@224"]
    with pytest.raises(TableError, match="no fit for loss column"):
        report.write_report(runs, document, tmp_path / "report")
