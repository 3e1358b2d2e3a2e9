"""AOT compilation of the train step for a TPU slice without a TPU (fourm_jax/train/aot.py,
tools/aot_compile.py): the tiny run compiled for v5e:2x2 (4 chips) through libtpu's topology."""

import json
import math
import pathlib
import subprocess
import sys

import pytest

from fourm_jax.train import aot

from .conftest import TINY_CONFIG, tiny_config

needs_libtpu = pytest.mark.skipif(not aot.libtpu_available(),
                                  reason="libtpu is not installed (the `tpu` extra: pip install -e '.[tpu]')")
TOPOLOGY = "v5e:2x2"
V5E_PEAK = 197e12
V5E_HBM = 16 * 2**30
# A one-layer model 8192 wide: ~1.7e9 parameters, with AdamW state far more than a v5e's 16 GiB
# when every chip holds all of it (the tiny run's mesh is data-parallel).
TOO_BIG = ("model.dim=8192", "model.num_heads=64")


def _run(repo_dir, tmp_path, *overrides):
    return aot.run_config(tiny_config(repo_dir, tmp_path / "unread", *overrides))


@pytest.fixture(scope="module")
def report(repo_dir, tmp_path_factory):
    return aot.aot_report(_run(repo_dir, tmp_path_factory.mktemp("aot")), TOPOLOGY)


@needs_libtpu
@pytest.mark.xdist_group("aot")
def test_slice_and_mesh(report):
    assert report["devices"] == 4 and report["device_kind"] == "TPU v5 lite"
    assert math.prod(report["mesh"].values()) == 4
    assert report["per_device_batch"] == report["global_batch"] / 4


@needs_libtpu
@pytest.mark.xdist_group("aot")
def test_memory_per_device_adds_up(report):
    memory = report["memory"]
    parts = ("arguments_bytes", "outputs_bytes", "temporaries_bytes", "generated_code_bytes")
    assert all(memory[part] > 0 for part in parts)
    # The donated state comes back in place: aliased, counted once.
    assert 0 < memory["aliased_bytes"] <= min(memory["arguments_bytes"], memory["outputs_bytes"])
    assert memory["total_bytes"] == (memory["arguments_bytes"] + memory["outputs_bytes"]
                                     - memory["aliased_bytes"] + memory["temporaries_bytes"]
                                     + memory["generated_code_bytes"])
    # The compiler's refusal of a too-large probe names the HBM a program may use: a little
    # under the chip's 16 GiB.
    assert report["hbm_source"] == "compiler"
    assert 0.9 * V5E_HBM < memory["hbm_bytes"] <= V5E_HBM
    assert memory["fits"] and memory["total_bytes"] < memory["hbm_bytes"]


@needs_libtpu
@pytest.mark.xdist_group("aot")
def test_flops_analytic_against_xla(report):
    flops = report["flops"]
    assert flops["analytic_model_per_device"] * 4 == pytest.approx(flops["analytic_model_per_step"])
    assert flops["analytic_remat_per_device"] == 0  # remat_policy none
    # XLA counts every operation (attention, norms, the optimizer), the analytic count only the
    # matmuls: XLA's is larger, but within a small factor for this unscanned one-layer model.
    analytic = flops["analytic_model_per_device"]
    assert analytic < flops["xla_per_device"] < 10 * analytic


@needs_libtpu
@pytest.mark.xdist_group("aot")
def test_step_time_is_the_roofline_and_implies_mfu_and_tokens(report):
    times = report["step_time"]
    terms = [times[name] for name in ("compute_s", "hbm_s", "ici_s") if times.get(name) is not None]
    assert len(terms) == 3 and all(t > 0 for t in terms)
    assert report["traffic"]["ici_bytes_per_device"]["all-reduce"] > 0  # data-parallel gradients
    assert times["roofline_s"] == max(terms)
    step = report["step_time_s"]
    assert step == (times["compiler_s"] or times["roofline_s"])
    assert report["mfu"] == pytest.approx(report["flops"]["analytic_model_per_step"] / step / (4 * V5E_PEAK))
    assert 0 < report["mfu"] <= 1
    assert report["tokens_per_s"] == pytest.approx(report["tokens_per_step"] / step)
    assert report["tokens_per_step"] == 8 * (24 + 24)


@needs_libtpu
@pytest.mark.xdist_group("aot")
def test_summary_names_the_figures(report):
    text = aot.format_report(report)
    for words in ("v5e:2x2", "memory per device", "fits", "FLOPs per step", "roofline", "MFU", "tokens/s"):
        assert words in text


@needs_libtpu
@pytest.mark.slow  # a second compile; the default run sees the compiler's refusal in the HBM probe
def test_program_larger_than_hbm_is_refused_with_the_compilers_figures(repo_dir, tmp_path):
    refused = aot.aot_report(_run(repo_dir, tmp_path, *TOO_BIG), TOPOLOGY)
    memory = refused["memory"]
    assert not memory["fits"]
    assert memory["required_bytes"] > memory["hbm_bytes"] > 0.9 * V5E_HBM
    assert "DOES NOT FIT" in aot.format_report(refused)


@needs_libtpu
def test_unknown_topology_is_a_clear_error():
    with pytest.raises(aot.AotError, match="v7q:2x2.*names look like v5e:16x16"):
        aot.topology_devices("v7q:2x2")


@needs_libtpu
@pytest.mark.xdist_group("aot")
def test_mesh_that_does_not_fit_the_slice_is_a_clear_error(repo_dir, tmp_path):
    with pytest.raises(aot.AotError, match="mesh"):
        aot.compile_train_step(_run(repo_dir, tmp_path, "mesh.data=3"), aot.topology_devices(TOPOLOGY))


def test_missing_libtpu_names_the_tpu_extra(monkeypatch):
    monkeypatch.setattr(aot, "libtpu_available", lambda: False)
    with pytest.raises(aot.AotError, match=r"pip install -e '\.\[tpu\]'"):
        aot.topology_devices(TOPOLOGY)


def test_missing_text_tokenizer_file_is_not_needed_to_compile(repo_dir):
    from fourm_jax import configs

    config = configs.load(str(repo_dir / "configs/4m7.py:B"))
    assert config.data.text_tokenizer == "text_tokenizer_4m_wordpiece_30k.json"
    run = aot.run_config(config)
    assert run.name == "4m7_B" and run.model.dim == 768


def test_4m21_compiles_without_its_4m7_initialisation(repo_dir):
    """4M-21 starts from a 4M-7 checkpoint (train.init_from); values do not change the program."""
    from fourm_jax import configs

    config = configs.load(str(repo_dir / "configs/4m21.py:B"))
    assert config.train.init_from and not pathlib.Path(config.train.init_from).exists()
    run = aot.run_config(config)
    assert run.train.init_from == "" and run.name.startswith("4m21")


def _cli(repo_dir, data_dir, json_path, *overrides):
    return subprocess.run([sys.executable, "tools/aot_compile.py", f"--config={TINY_CONFIG}",
                           f"--config.data.datasets.tiny.path={data_dir}", f"--topology={TOPOLOGY}",
                           f"--json={json_path}", *[f"--config.{o}" for o in overrides]],
                          cwd=repo_dir, capture_output=True, text=True, timeout=900)


@needs_libtpu
@pytest.mark.slow
def test_tool_prints_and_writes_json(repo_dir, tmp_path):
    result = _cli(repo_dir, tmp_path / "unread", tmp_path / "report.json")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "memory per device" in result.stdout and "MFU" in result.stdout
    written = json.loads((tmp_path / "report.json").read_text())
    assert written["topology"] == TOPOLOGY and written["memory"]["fits"]


@needs_libtpu
@pytest.mark.slow
def test_tool_exits_non_zero_when_the_program_does_not_fit(repo_dir, tmp_path):
    result = _cli(repo_dir, tmp_path / "unread", tmp_path / "report.json", *TOO_BIG)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "DOES NOT FIT" in result.stdout and "exceeds available HBM" in result.stdout


def test_tool_without_libtpu_exits_with_the_extra_named(repo_dir, tmp_path):
    # The tool run with libtpu hidden from importlib's module search.
    code = ("import sys, runpy; import importlib.util as u; f = u.find_spec; "
            "u.find_spec = lambda n, *a: None if n == 'libtpu' else f(n, *a); "
            "sys.argv = sys.argv[1:]; runpy.run_path('tools/aot_compile.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code, "tools/aot_compile.py", f"--config={TINY_CONFIG}",
                             f"--config.data.datasets.tiny.path={tmp_path}", f"--topology={TOPOLOGY}"],
                            cwd=repo_dir, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert "pip install -e '.[tpu]'" in result.stderr
