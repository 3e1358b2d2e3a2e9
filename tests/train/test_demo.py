"""tools/demo.py and configs/demo.py: the demo uses the tokenizers present, and reports its losses."""


import pytest

from fourm_jax import configs
from fourm_jax.train.config import RunConfig


@pytest.fixture(scope="module")
def demo(import_tool):
    return import_tool("demo")


def test_the_demo_uses_the_tokenizers_present(demo, tmp_path):
    (tmp_path / "depth").mkdir()
    (tmp_path / "depth" / "model.safetensors").write_bytes(b"")
    (tmp_path / "rgb").mkdir()  # an artifact still being written: no weights yet
    (tmp_path / "semseg").mkdir()
    (tmp_path / "semseg" / "model.safetensors").write_bytes(b"")
    assert demo.shipped_tokenizers(tmp_path) == ["depth", "semseg"]
    assert demo.shipped_tokenizers(tmp_path / "missing") == []


@pytest.mark.parametrize("arg", ["", "tok_semseg@64,tok_depth@64"])
def test_demo_config_covers_the_token_modalities(repo_dir, arg):
    spec = str(repo_dir / "configs" / "demo.py") + (f":{arg}" if arg else "")
    run = RunConfig.from_config(configs.load(spec))
    tokens = [m for m in ("tok_depth@64", "tok_semseg@64") if m in arg]
    assert run.model.domains_in == ("rgb@64", *tokens, "caption", "det")
    assert run.model.domains_out == (*tokens, "caption", "det")
    masking = run.data.datasets[0].masking
    assert set(masking.alphas) == {"rgb@64", *tokens, "caption", "det"}
    assert run.data.datasets[0].path == ("scenes_tok/64px" if arg else "scenes/64px")
    assert run.eval.data.datasets[0].split == "validation"


def test_demo_config_names_an_unknown_modality(repo_dir):
    with pytest.raises(ValueError, match="unknown token modalities \\['tok_dinov2@224'\\]"):
        configs.load(str(repo_dir / "configs" / "demo.py:tok_dinov2@224"))


def test_loss_table_and_plot(demo, tmp_path):
    rows = [{"step": s, "loss": 10.0 - s, "loss/caption": 9.0 - s, "loss/tok_rgb@64": 8.0 - s}
            for s in (25, 50)]
    rows[-1].update({"eval/loss": 7.5, "eval/loss/caption": 6.5, "eval/loss/tok_rgb@64": 5.5})
    lines = demo.loss_table(rows).splitlines()
    assert lines[0].split() == ["step", "split", "total", "caption", "tok_rgb@64"]
    assert lines[1].split() == ["25", "train", "-15.000", "-16.000", "-17.000"]
    assert lines[3].split() == ["50", "eval", "7.500", "6.500", "5.500"]
    demo.plot_losses(rows, tmp_path / "losses.png")
    assert (tmp_path / "losses.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
