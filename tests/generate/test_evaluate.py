"""fourm_jax.generate.evaluate and tools/eval_generation.py: the caption metric on hand-made
captions, the report on a tiny random model, tiny random tokenizers and a tiny built scenes split."""

import json

import jax
import pytest
from flax import nnx

from fourm_jax.data import records, scenes_dataset
from fourm_jax.generate import evaluate
from fourm_jax.model.config import variant_config
from fourm_jax.tokenizers import ml4m
from fourm_jax.tokenizers.config import NetConfig, TokenizerConfig
from fourm_jax.tokenizers.vqvae import VQVAE
from fourm_jax.train import checkpoint
from tests.generate.conftest import random_model


def test_named_shapes_reads_singular_and_plural_words_only():
    caption = "Two spheres and a cone. The cone is left of a sphere."
    assert evaluate.named_shapes(caption) == {"sphere", "cone"}
    assert evaluate.named_shapes("A CUBE, cylinders!") == {"cube", "cylinder"}
    assert evaluate.named_shapes("conepoint cubed spherical") == set()


def test_caption_scores_on_hand_made_captions():
    scores = evaluate.caption_scores(
        ["a cube and a cone", "a cube", "two spheres and a cube", "an empty floor"],
        [["cube", "cone"], ["cube", "cone", "cone"], ["cube"], []])
    # exact: rows 0 and 3; recall: 1, 1/2, 1, 1 (no objects); absent: row 2 names spheres
    assert scores == {"names_objects": 0.5, "recall": 0.875, "names_absent": 0.25}
    with pytest.raises(ValueError, match="2 captions for 1 scenes"):
        evaluate.caption_scores(["a", "b"], [["cube"]])


def test_markdown_table_lists_generated_and_floor():
    report = {"num_scenes": 3, "depth": {"generated": {"abs_rel": 0.25}, "tokenizer": {"abs_rel": 0.05}},
              "caption": {"generated": {"names_objects": 0.5, "recall": 0.75, "names_absent": 0.0},
                          "dataset": {"names_objects": 1.0, "recall": 1.0, "names_absent": 0.0}}}
    table = evaluate.markdown_table(report)
    assert "| depth | abs. rel. error (lower is better) | 0.250 | 0.050 |" in table
    assert "| caption | names exactly the shapes present | 0.500 | 1.000 |" in table
    assert "semseg" not in table and "3 held-out scenes" in table


@pytest.fixture(scope="module")
def scenes_files(tmp_path_factory):
    """A 3-scene validation split, a tiny random scenes model checkpoint, random 64 px tokenizers."""
    root = tmp_path_factory.mktemp("eval_generation")
    dataset = scenes_dataset.build(root / "data", num_train=0, num_validation=3, progress=False)
    config = variant_config("fm_test_tiny_gelu", domains_in=("rgb@64", "tok_depth@64", "caption"),
                            domains_out=("tok_depth@64", "tok_semseg@64", "caption"))
    model = random_model(config)
    checkpoint.save_params(root / "checkpoint", nnx.state(model), config)
    net = NetConfig(dim=32, depth=1, num_heads=2)
    specs = {"tok_depth@64": dict(modality="depth", n_channels=1, codebook_size=512),
             "tok_semseg@64": dict(modality="semseg", n_channels=8, n_labels=7, codebook_size=256)}
    for i, (name, spec) in enumerate(specs.items()):
        tokenizer = VQVAE(TokenizerConfig(image_size=64, patch_size=8, encoder=net, decoder=net, latent_dim=8,
                                          **spec))
        ml4m.save(root / name, tokenizer, jax.device_get(tokenizer.init(jax.random.key(i))))
    return dict(root=root, dataset=dataset)


@pytest.fixture(scope="module")
def tool(import_tool):
    return import_tool("eval_generation")


@pytest.mark.slow  # about 40 s on 2 cores: three generation loops, two tokenizers, the scenes renderer
def test_eval_generation_writes_the_report(tool, scenes_files, shared_dir, tmp_path, capsys):
    root, out = scenes_files["root"], tmp_path / "quality"
    assert tool.main(["--checkpoint", str(root / "checkpoint"), "--dataset", str(scenes_files["dataset"]),
                      "--tokenizer", f"tok_depth@64={root / 'tok_depth@64'}",
                      "--tokenizer", f"tok_semseg@64={root / 'tok_semseg@64'}",
                      "--text_tokenizer", str(shared_dir / "vocab" / "text_tokenizer_4m_wordpiece_30k.json"),
                      "--num_scenes", "3", "--batch_size", "2", "--steps", "2", "--caption_tokens", "6",
                      "--out", str(out)]) == 0
    report = json.loads((out / "quality.json").read_text())
    assert report["num_scenes"] == 3 and report["split"] == "validation"
    for field, metric in (("depth", "abs_rel"), ("semseg", "miou"), ("semseg", "pixel_accuracy")):
        for which in ("generated", "tokenizer"):
            assert 0.0 <= report[field][which][metric] < 100.0, (field, which)
    assert 0.0 <= report["semseg"]["generated"]["miou"] <= 1.0
    # The dataset's captions name exactly the visible shapes: the metric agrees with the scenes' captions.
    assert report["caption"]["dataset"] == {"names_objects": 1.0, "recall": 1.0, "names_absent": 0.0}
    assert len(report["caption"]["examples"]) == 3
    assert all(isinstance(c, str) for c in report["caption"]["examples"])
    assert (out / "quality.md").read_text() == capsys.readouterr().out.rstrip("\n") + "\n"
    split = records.open_dataset(scenes_files["dataset"], "validation")
    assert len(split) == 3


def test_eval_generation_names_bad_arguments(tool, tmp_path):
    with pytest.raises(SystemExit, match="nowhere"):
        tool.main(["--checkpoint", str(tmp_path / "checkpoint"), "--dataset", str(tmp_path / "nowhere"),
                   "--out", str(tmp_path / "q")])
    with pytest.raises(SystemExit, match="'tok_rgb@64=x': expected NAME=DIR, NAME one of"):
        tool.main(["--checkpoint", "c", "--tokenizer", "tok_rgb@64=x", "--out", str(tmp_path / "q")])
