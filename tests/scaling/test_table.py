import json

import numpy as np
import pytest

from fourm_jax.scaling.table import TableError, load_runs, match_loss_columns

HEADER = "run,params,tokens,flops,loss,loss/tok_rgb@224\n"
GOOD_ROWS = ["a,1e8,2e9,1.2e18,3.1,2.5", "b,2e8,1e9,1.2e18,3.0,2.4", "c,4e8,5e8,1.2e18,3.2,2.6"]


def _csv(tmp_path, rows, header=HEADER, name="runs.csv"):
    path = tmp_path / name
    path.write_text(header + "\n".join(rows) + "\n")
    return path


def test_reads_csv_with_default_columns(tmp_path):
    runs = load_runs(_csv(tmp_path, GOOD_ROWS), loss_columns=["loss", "loss/*"])
    np.testing.assert_allclose(runs.n, [1e8, 2e8, 4e8])
    np.testing.assert_allclose(runs.d, [2e9, 1e9, 5e8])
    assert list(runs.losses) == ["loss", "loss/tok_rgb@224"]
    assert runs.names == ("a", "b", "c")
    assert runs.flops_per_param_token == pytest.approx(6.0)  # median of C / (N·D)
    assert "estimated" in runs.flops_per_param_token_source


def test_derives_d_from_flops_and_flops_from_d(tmp_path):
    path = _csv(tmp_path, ["a,1e8,1e18,3", "b,2e8,2e18,2.9"], header="run,N,C,L\n")
    runs = load_runs(path, n_column="N", flops_column="C", loss_columns=["L"], flops_per_param_token=3.0)
    np.testing.assert_allclose(runs.d, [1e18 / 3e8, 2e18 / 6e8])
    assert runs.columns == {"n": "N", "d": None, "flops": "C"}
    path = _csv(tmp_path, ["a,1e8,1e9,3"], header="run,params,tokens,loss\n", name="nd.csv")
    np.testing.assert_allclose(load_runs(path, loss_columns=["loss"]).c, [6e17])


def test_reads_json_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text("\n".join(json.dumps({"name": f"r{i}", "params": 1e8 * (i + 1), "flops": 1e18,
                                          "loss": 3.0 - 0.1 * i}) for i in range(3)) + "\n\n")
    runs = load_runs(path, loss_columns=["loss"])
    assert runs.names == ("r0", "r1", "r2") and len(runs) == 3


@pytest.mark.parametrize("rows, kwargs, message", [
    (GOOD_ROWS, dict(n_column="N"), r"no N \(parameters\) column 'N'; the table has columns: run, params"),
    (GOOD_ROWS, dict(d_column="D"), r"no D \(tokens\) column 'D'"),
    (GOOD_ROWS, dict(flops_column="compute"), r"no C \(FLOPs\) column 'compute'"),
    (["a,1e8,2e9,1e18,3.1,2.5", "b,0,1e9,1e18,3.0,2.4"], {},
     r"line 3 \(run 'b'\), column 'params'.*positive"),
    (["a,1e8,-2e9,1e18,3.1,2.5"], {}, r"line 2 \(run 'a'\), column 'tokens'.*positive"),
    (["a,1e8,2e9,1e18,0,2.5"], {}, r"line 2 \(run 'a'\), column 'loss'.*positive"),
    (["a,1e8,2e9,1e18,nan,2.5"], {}, r"column 'loss'.*positive finite"),
    (["a,1e8,2e9,1e18,three,2.5"], {}, r"column 'loss': expected a number, got 'three'"),
    (["a,1e8,2e9,1e18,,2.5"], {}, r"line 2 \(run 'a'\), column 'loss': value is missing"),
    (["a,1e8,2e9,1e18,3.1,2.5,extra"], {}, "line 2 has more fields than the header"),
])
def test_bad_tables_name_the_row_or_column(tmp_path, rows, kwargs, message):
    with pytest.raises(TableError, match=message):
        load_runs(_csv(tmp_path, rows), loss_columns=["loss"], **kwargs)


def test_table_without_d_or_c(tmp_path):
    path = _csv(tmp_path, ["a,1e8,3"], header="run,params,loss\n")
    with pytest.raises(TableError, match="needs a D .* or a C"):
        load_runs(path, loss_columns=["loss"])


def test_unmatched_loss_column(tmp_path):
    with pytest.raises(TableError, match="no loss column matches 'val_loss'"):
        load_runs(_csv(tmp_path, GOOD_ROWS), loss_columns=["val_loss"])
    assert match_loss_columns(["loss*"], ["loss", "loss/a", "x"], "t") == ["loss", "loss/a"]


def test_bad_json_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    path.write_text('{"params": 1e8, "flops": 1e18, "loss": 3}\n{"params": oops}\n')
    with pytest.raises(TableError, match="line 2 is not valid JSON"):
        load_runs(path, loss_columns=["loss"])
    path.write_text('{"params": 1e8, "flops": 1e18, "loss": 3}\n{"params": 2e8, "loss": 2.9}\n')
    with pytest.raises(TableError, match="column 'flops' is missing on line 2"):
        load_runs(path, loss_columns=["loss"])


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(TableError, match="no such file"):
        load_runs(tmp_path / "none.csv", loss_columns=["loss"])
    (tmp_path / "runs.xlsx").write_text("x")
    with pytest.raises(TableError, match="unknown table format"):
        load_runs(tmp_path / "runs.xlsx", loss_columns=["loss"])
