import math

import pytest

from fourm_jax import configs
from fourm_jax.configs import ConfigError
from fourm_jax.train import optimizer
from fourm_jax.train.config import RunConfig, defaults
from tests.train.conftest import tiny_config

VOCAB = "../shared/vocab/text_tokenizer_4m_wordpiece_30k.json"


def recipe(repo_dir, shared_dir, spec, *overrides):
    vocab = str(shared_dir / "vocab" / "text_tokenizer_4m_wordpiece_30k.json")
    extra = [f"data.text_tokenizer={vocab}"]
    if spec.startswith("4m21"):
        extra.append("train.init_from=")
    return RunConfig.from_config(configs.load(str(repo_dir / "configs" / spec), [*extra, *overrides]))


@pytest.mark.parametrize("size, variant, lr, clip, skip, remat, fsdp", [
    ("B", "fm_base_12e_12d_swiglu_nobias", 3.2e-3, 0.0, False, "none", 1),
    ("L", "fm_large_24e_24d_swiglu_nobias", 3.2e-3, 1e4, True, "full", -1),  # remat: fits v5e (AOT)
    ("XL", "fm_xlarge_24e_24d_swiglu_nobias", 6.4e-4, 3.0, True, "full", -1),
])
def test_4m7_recipes_carry_ml4m_hyperparameters(repo_dir, shared_dir, size, variant, lr, clip, skip,
                                                 remat, fsdp):
    run = recipe(repo_dir, shared_dir, f"4m7.py:{size}")
    from fourm_jax.model.config import variant_config
    expected = variant_config(variant)
    assert (run.model.dim, run.model.encoder_depth, run.model.num_heads) == (
        expected.dim, expected.encoder_depth, expected.num_heads)
    assert run.model.gated_mlp and not run.model.qkv_bias and run.model.dtype == "bfloat16"
    assert run.model.tie_output_embeddings and run.model.remat_policy == remat
    assert run.global_batch == 8192 and run.train.num_input_tokens == run.train.num_target_tokens == 128
    # ml-4m: ceil(500e9 / (256 tokens x 8192)) steps (its epoch rounding gives 239,120), warmup
    # ceil(10e9 / (256 x 8192)) = 4769 steps.
    assert run.total_steps == math.ceil(500e9 / (256 * 8192)) == 238_419
    assert run.warmup_steps == 4769
    assert optimizer.scaled_lr(run.optimizer.base_lr, run.global_batch) == pytest.approx(lr)
    assert (run.optimizer.clip_grad, run.optimizer.skip_nonfinite) == (clip, skip)
    assert (run.optimizer.b1, run.optimizer.b2, run.optimizer.eps, run.optimizer.weight_decay) == (
        0.9, 0.95, 1e-8, 0.05)
    assert run.mesh["fsdp"] == fsdp
    assert run.eval.every_steps == run.train.checkpoint_every == 1220  # ml-4m's 10M-example epoch
    assert (run.eval.num_input_tokens, run.eval.num_target_tokens) == (128, 128)
    assert set(run.model.domains_out) == set(run.model.domains_in) - {"rgb@224"}


@pytest.mark.parametrize("size, lr, remat", [("B", 1.6e-3, "full"), ("L", 1.6e-3, "full"),
                                             ("XL", 3.2e-4, "full")])
def test_4m21_recipes_carry_ml4m_hyperparameters(repo_dir, shared_dir, size, lr, remat):
    run = recipe(repo_dir, shared_dir, f"4m21.py:{size}")
    assert run.global_batch == 4096 and run.train.num_input_tokens == 256
    assert run.total_steps == 238_419 and run.warmup_steps == 4769
    assert optimizer.scaled_lr(run.optimizer.base_lr, run.global_batch) == pytest.approx(lr)
    assert run.model.remat_policy == remat
    assert {d.name: d.weight for d in run.data.datasets} == {"cc12m": 0.6, "coyo700m": 0.2, "c4": 0.2}
    assert "t5_caption" in run.model.domains_in and "t5_caption" not in run.model.domains_out
    assert len(run.model.domains_in) == 19
    assert run.train.init_drop == (".pos_emb",)
    default = configs.load(str(repo_dir / "configs" / f"4m21.py:{size}"))
    assert default.train.init_from == f"runs/4m7_{size}"


def test_recipe_without_its_init_checkpoint_names_the_field(repo_dir, shared_dir):
    with pytest.raises(ConfigError, match="train.init_from: runs/4m7_B does not exist"):
        RunConfig.from_config(configs.load(str(repo_dir / "configs" / "4m21.py:B"), [
            f"data.text_tokenizer={shared_dir / 'vocab' / 'text_tokenizer_4m_wordpiece_30k.json'}"]))


def test_every_field_of_the_defaults_can_be_overridden():
    config = defaults()
    for override in ("train.accum_steps=4", "optimizer.clip_grad=1.0", "eval.every_steps=10",
                     "data.num_workers=2", "mesh.fsdp=2", "model.remat_policy=full"):
        configs.apply_override(config, override)
    assert config.train.accum_steps == 4 and config.optimizer.clip_grad == 1.0


@pytest.mark.parametrize("override, message", [
    ("train.accum_step=2", r"unknown field\(s\) train.accum_step"),
    ("train.accum_steps=3", "not divisible by train.accum_steps=3"),
    ("train.num_input_tokens=16", r"masking.input_tokens=24 exceeds train.num_input_tokens=16"),
    ("train.log_every=0", "train.log_every: must be a positive integer"),
    ("train.warmup_steps=100", r"warmup \(100 steps\) is longer than the run \(8 steps\)"),
    ("optimizer.b1=1.5", "optimizer.b1"),
    ("model.dim=30", "model.dim"),
    ("mesh.fsdp=0", "mesh.fsdp"),
    ("data.modalities=('tok_depth@224',)", r"lacks the model's output modalities \['tok_semseg@224'\]"),
    ("data.global_batch_size=0", "data: global_batch_size must be > 0"),
])
def test_invalid_fields_are_named(repo_dir, tiny_data, override, message):
    config = tiny_config(repo_dir, tiny_data)
    *path, leaf = override.split("=")[0].split(".")
    node = config
    for part in path:
        node = node[part]
    if leaf not in node:
        node[leaf] = 0  # a misspelt field
    configs.apply_override(config, override)
    with pytest.raises(ConfigError, match=message):
        RunConfig.from_config(config)


def test_sequence_modalities_need_a_text_tokenizer(repo_dir, tmp_path):
    config = configs.load(str(repo_dir / "configs" / "demo.py"),
                          [f"data.text_tokenizer={tmp_path}/none.json"])
    with pytest.raises(ConfigError, match="data.text_tokenizer: .*none.json does not exist"):
        RunConfig.from_config(config)
    config.data.text_tokenizer = None
    with pytest.raises(ConfigError, match="data.text_tokenizer: the sequence modalities"):
        RunConfig.from_config(config)


def test_unknown_section_is_named(repo_dir, tiny_data):
    config = tiny_config(repo_dir, tiny_data)
    config.trainer = {}
    with pytest.raises(ConfigError, match="unknown top-level field"):
        RunConfig.from_config(config)
