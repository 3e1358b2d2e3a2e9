"""tools/generate.py and the pieces it is made of (recipe.py, outputs.py), on the tiny random model
with tiny random tokenizers."""

import contextlib
import io
import json

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from fourm_jax import configs
from fourm_jax.generate import GenerationSampler, outputs
from fourm_jax.generate.recipe import Target, build_schedule, generate
from fourm_jax.text.formats import Box
from fourm_jax.text.tokenizer import load_tokenizer as load_text_tokenizer
from fourm_jax.tokenizers import ml4m
from fourm_jax.tokenizers.artifacts import load_tokenizer as load_image_tokenizer
from fourm_jax.tokenizers.config import NetConfig, TokenizerConfig
from fourm_jax.tokenizers.vqvae import VQVAE
from fourm_jax.train import checkpoint
from tests.generate.conftest import A, B


@pytest.fixture(scope="module")
def cli(import_tool):
    return import_tool("generate")


@pytest.fixture(scope="module")
def files(tiny_model, tmp_path_factory, shared_dir):
    """A checkpoint of the tiny model, 32 px tokenizers with 4x4 token grids for A and B, a 32 px image."""
    root = tmp_path_factory.mktemp("generate_cli")
    checkpoint.save_params(root / "checkpoint", nnx.state(tiny_model), tiny_model.config)
    net = NetConfig(dim=32, depth=1, num_heads=2)
    for i, name in enumerate((A, B)):
        config = TokenizerConfig(modality="rgb", image_size=32, patch_size=8, encoder=net, decoder=net,
                                 codebook_size=8192, latent_dim=8)
        tokenizer = VQVAE(config)
        ml4m.save(root / name, tokenizer, jax.device_get(tokenizer.init(jax.random.key(i))))
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3)).astype(np.uint8)
    Image.fromarray(image).save(root / "image.png")
    Image.fromarray(image[:16, :16]).save(root / "small.png")
    return dict(root=root, text=str(shared_dir / "vocab" / "text_tokenizer_4m_wordpiece_30k.json"))


def _args(files, *extra):
    root = files["root"]
    return ["--checkpoint", str(root / "checkpoint"), "--tokenizer", f"{A}={root / A}",
            "--tokenizer", f"{B}={root / B}", "--text_tokenizer", files["text"], *extra]


@pytest.fixture(scope="module")
def cli_run(cli, files, tmp_path_factory):
    """The output directory and printed summary of one command-line run: A -> B and a caption."""
    out = tmp_path_factory.mktemp("cli_run") / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert cli.main(_args(files, "--condition", f"{A}={files['root'] / 'image.png'}", "--target", B,
                              "--target", "caption", "--steps", "4", "--num_samples", "2",
                              "--shape_buckets", "1", "--out", str(out))) == 0
    return out, json.loads(printed.getvalue().strip().splitlines()[-1])


def test_cli_writes_decoded_outputs_tokens_and_grid(cli_run):
    out, summary = cli_run
    assert summary["decoded"] == [B, "caption"] and summary["samples"] == 2
    for i in range(2):
        for name in (A, B, "caption"):
            assert (out / f"sample_{i}" / f"{name}.png").is_file(), name
        assert np.asarray(Image.open(out / f"sample_{i}" / f"{B}.png")).shape == (32, 32, 3)
        assert (out / f"sample_{i}" / "caption.txt").read_text().strip() != ""
    # Rows: samples; columns: the condition, then the two targets (titled 224 px tiles).
    assert np.asarray(Image.open(out / "grid.png")).shape == (2 * (224 + 14), 3 * 224, 3)
    tokens = np.load(out / "tokens.npz")
    assert tokens[f"{B}/tensor"].shape == (2, 16) and not tokens[f"{B}/input_mask"].any()
    assert not np.array_equal(tokens[f"{B}/tensor"][0], tokens[f"{B}/tensor"][1])  # two samples


def test_api_returns_the_cli_tokens_and_their_decoding(cli_run, files):
    """recipe.generate gives the tokens the command line wrote (same seed) and decodes them through
    the tokenizers. (The model loaded as the command line loads it shares its compiled loops.)"""
    written = np.load(cli_run[0] / "tokens.npz")
    root = files["root"]
    tokenizers = {name: load_image_tokenizer(root / name) for name in (A, B)}
    text_tokenizer = load_text_tokenizer(files["text"])
    targets = [Target(B, steps=4), Target("caption")]
    sampler = GenerationSampler(checkpoint.load_model(root / "checkpoint"), shape_buckets=1)
    tokens, decoded = generate(sampler, {A: root / "image.png"}, targets, tokenizers, text_tokenizer,
                               num_samples=2)
    for domain in (A, B, "caption"):
        np.testing.assert_array_equal(tokens[domain]["tensor"], written[f"{domain}/tensor"], err_msg=domain)
    assert list(decoded) == [A, B, "caption"]
    tokenizer, variables = tokenizers[B]
    for i in range(2):
        expected = outputs.decoded_image("rgb", np.asarray(
            tokenizer.decode(variables, tokens[B]["tensor"][i].reshape(1, 4, 4)))[0])
        np.testing.assert_array_equal(decoded[B][i], expected)
        assert isinstance(decoded["caption"][i], str)
    with pytest.raises(ValueError, match="'caption'.*needs the text tokenizer"):
        generate(sampler, {A: root / "image.png"}, targets, tokenizers, None)


@pytest.mark.parametrize("extra, message", [
    (["--condition", "A_SMALL", "--target", B], "small.png: expected size 32x32, got 16x16"),
    (["--condition", "rgb@224=IMAGE", "--target", B], "image.png: rgb@224 takes 224x224 RGB images"),
    (["--condition", "caption=a cube", "--target", "tok_depth@224"], "'tok_depth@224'.*cannot generate it"),
    (["--condition", "tok_foo@224=x", "--target", B], "'tok_foo@224': unknown modality"),
    (["--condition", "caption=a cube", "--recipe", "RECIPE"], "'tok_rgb@224'.*cannot generate it"),
    (["--recipe", "RECIPE"], "expects --condition for \\['caption'\\]"),
    (["--condition", "caption=a cube", "--recipe", "RECIPE", "--target", "det"],
     "--target \\['det'\\]: not among .*caption_to_rgb.py's targets"),
    (["--condition", "A_IMAGE", "--target", B, "--tokenizer", "tok_depth@64=NOWHERE"],
     "no tokenizer '.*nowhere'"),
    (["--condition", "A_IMAGE", "--target", B, "--steps", "17"], "17 decoding steps for 16 tokens"),
])
def test_cli_rejects_bad_input_before_generating(cli, files, tmp_path, repo_dir, monkeypatch, extra, message):
    def never(*args, **kwargs):
        raise AssertionError("generation (and its compilation) started before the input was checked")

    monkeypatch.setattr(cli.GenerationSampler, "generate", never)
    root = files["root"]
    names = {"A_SMALL": f"{A}={root / 'small.png'}", "rgb@224=IMAGE": f"rgb@224={root / 'image.png'}",
             "A_IMAGE": f"{A}={root / 'image.png'}",
             "tok_depth@64=NOWHERE": f"tok_depth@64={root / 'nowhere'}",
             "RECIPE": str(repo_dir / "configs" / "generate" / "caption_to_rgb.py")}
    with pytest.raises(SystemExit, match=message):
        cli.main(_args(files, *[names.get(e, e) for e in extra], "--out", str(tmp_path)))
    assert not (tmp_path / "grid.png").exists()


def test_display_conversions():
    depth = outputs.depth_image(np.linspace(2.0, 5.0, 64).reshape(8, 8))
    assert depth.shape == (8, 8, 3) and depth.dtype == np.uint8
    assert not np.array_equal(depth[0, 0], depth[-1, -1])
    classes = outputs.class_image(np.array([[0, 1], [2, 1]]))
    assert (classes[0, 0] == 0).all() and np.array_equal(classes[0, 1], classes[1, 1])
    assert not np.array_equal(classes[0, 1], classes[1, 0])
    features = np.random.default_rng(0).standard_normal((6, 6, 10))
    pca = outputs.pca_image(features)
    assert pca.shape == (6, 6, 3) and pca.min() == 0 and pca.max() == 255
    image = np.zeros((50, 50, 3), np.uint8)
    boxed = outputs.draw_boxes(image, [Box(0.1, 0.1, 0.5, 0.5, "cube")])
    assert boxed[5, 10:25].any() and not boxed[40:, 40:].any()
    assert outputs.grid([[("a", image)], [("b", image), ("c", image)]], tile=20).shape == (2 * 34, 40, 3)


@pytest.mark.parametrize("name", ["rgb_to_all", "caption_to_rgb", "caption_chain", "scenes_rgb_to_all"])
def test_recipes_build_their_schedules(repo_dir, name):
    recipe = configs.load(str(repo_dir / "configs" / "generate" / f"{name}.py"), []).to_dict()
    targets = [Target.from_config(t, f"{name}: targets[{i}]") for i, t in enumerate(recipe["targets"])]
    schedule = build_schedule(recipe["conditions"], targets, recipe["cfg_grow_conditioning"])
    assert len(schedule) == sum(1 if t.resolved_scheme == "autoregressive" else t.steps for t in targets)
    assert [s["target_domain"] for s in schedule][-1] == targets[-1].domain
    assert set(recipe["tokenizers"]) <= {t.domain for t in targets}


def test_recipe_targets_reject_unknown_fields():
    with pytest.raises(ValueError, match="recipe: targets\\[0\\]: unknown field\\(s\\) \\['step'\\]"):
        Target.from_config(dict(domain="caption", step=3), "recipe: targets[0]")
