"""Conversion between ml-4m checkpoint directories and fourm_jax Orbax checkpoints."""

import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file

from fourm_jax.convert import files
from fourm_jax.convert.ml4m import ConversionError
from fourm_jax.convert.safetensors_io import write_safetensors
from fourm_jax.train import checkpoint
from tests.model.parity_fixtures import fixture_dirs, materialise_weights

FIXTURES = fixture_dirs()
REPO = pathlib.Path(__file__).resolve().parents[2]


def _ml4m_dir(fixture: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    directory.mkdir()
    materialise_weights(fixture, directory / files.WEIGHTS_FILE)
    (directory / files.CONFIG_FILE).write_text((fixture / "config.json").read_text())
    return directory


@pytest.fixture(scope="module", params=FIXTURES, ids=[p.name for p in FIXTURES])
def ml4m_dir(request, tmp_path_factory):
    return _ml4m_dir(request.param, tmp_path_factory.mktemp(request.param.name) / "ml4m")


def _assert_identical(a: pathlib.Path, b: pathlib.Path):
    tensors_a, tensors_b = load_file(a / files.WEIGHTS_FILE), load_file(b / files.WEIGHTS_FILE)
    assert list(tensors_a) and tensors_a.keys() == tensors_b.keys()
    for key, value in tensors_a.items():
        assert value.dtype == tensors_b[key].dtype and value.shape == tensors_b[key].shape, key
        np.testing.assert_array_equal(value, tensors_b[key], err_msg=key)
    assert json.loads((a / files.CONFIG_FILE).read_text()) == json.loads((b / files.CONFIG_FILE).read_text())


@pytest.mark.parametrize("unscanned", [False, True], ids=["scanned", "unscanned"])
def test_round_trip_is_exact(ml4m_dir, tmp_path, unscanned):
    """ml4m -> orbax -> ml4m gives the same tensors (keys, shapes, dtypes, values) and config."""
    overrides = dict(scan_layers=False) if unscanned else {}
    files.convert("ml4m", ml4m_dir, "orbax", tmp_path / "orbax", **overrides)
    assert checkpoint.load_config(tmp_path / "orbax").scan_layers is not unscanned
    files.convert("orbax", tmp_path / "orbax", "ml4m", tmp_path / "back")
    _assert_identical(ml4m_dir, tmp_path / "back")
    with safe_open(str(tmp_path / "back" / files.WEIGHTS_FILE), framework="numpy") as f:
        metadata = f.metadata()
    config = json.loads((ml4m_dir / files.CONFIG_FILE).read_text())
    assert json.loads(metadata["domains_in"]) == config["domains_in"]


def test_command_line_round_trip(tmp_path):
    source = _ml4m_dir(FIXTURES[0], tmp_path / "ml4m")
    tool = [sys.executable, str(REPO / "tools" / "convert_checkpoint.py")]
    for src_kind, src, dst_kind, dst in (("ml4m", source, "orbax", tmp_path / "orbax"),
                                         ("orbax", tmp_path / "orbax", "ml4m", tmp_path / "back")):
        result = subprocess.run(tool + ["--from", src_kind, str(src), "--to", dst_kind, str(dst)],
                                capture_output=True, text=True, cwd=REPO)
        assert result.returncode == 0, result.stderr
    _assert_identical(source, tmp_path / "back")
    result = subprocess.run(tool + ["--from", "ml4m", str(source), "--to", "orbax", str(tmp_path / "orbax")],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 1 and "already exists" in result.stderr


def _leftovers(directory: pathlib.Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_bad_tensor_writes_nothing(tmp_path):
    source = _ml4m_dir(FIXTURES[0], tmp_path / "ml4m")
    tensors = load_file(source / files.WEIGHTS_FILE)
    key = next(k for k in tensors if k.endswith("attn.proj.weight"))
    tensors[key] = tensors[key][:, :-1]
    entries = [(k, v.shape, v.dtype, lambda v=v: v) for k, v in tensors.items()]
    write_safetensors(source / files.WEIGHTS_FILE, entries)
    out = tmp_path / "out"
    out.mkdir()
    shapes = r"has shape \(\d+, \d+\), the model expects \(\d+, \d+\)"
    with pytest.raises(ConversionError, match=key + " " + shapes):
        files.convert("ml4m", source, "orbax", out / "orbax")
    assert _leftovers(out) == []


def test_existing_destination_is_not_touched(ml4m_dir, tmp_path):
    (tmp_path / "orbax").mkdir()
    (tmp_path / "orbax" / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists"):
        files.convert("ml4m", ml4m_dir, "orbax", tmp_path / "orbax")
    assert (tmp_path / "orbax" / "keep.txt").read_text() == "mine"


def test_unknown_kinds_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="unknown checkpoint kind 'pth'"):
        files.convert("pth", tmp_path, "orbax", tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="config.json"):
        files.convert("ml4m", tmp_path, "orbax", tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="not a fourm_jax checkpoint"):
        files.convert("orbax", tmp_path, "ml4m", tmp_path / "x")
