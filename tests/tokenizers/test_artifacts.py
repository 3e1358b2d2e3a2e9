"""The shipped scenes tokenizers (tokenizers/scenes_64/): each loads, and is what `make tokenizers`
makes from the spec file now in tokenizers/ (a spec edited without retraining fails here)."""

import json

import pytest

from fourm_jax.tokenizers import artifacts, specs, train, trainer

# The held-out metric each modality reports besides codebook usage and perplexity.
QUALITY_METRICS = {"rgb": ["psnr"], "depth": ["abs_rel"], "normal": ["mean_angular_error"],
                   "semseg": ["pixel_accuracy", "miou"]}


@pytest.mark.parametrize("modality", sorted(artifacts.SHIPPED))
def test_shipped_tokenizer_matches_its_spec(repo_dir, modality):
    stored = artifacts.read_spec(modality)
    spec = specs.load(str(repo_dir / "tokenizers" / f"scenes_{stored['field']}.py"))
    assert stored == trainer.spec_json(spec)
    assert artifacts.token_modality(stored) == modality

    tok, variables = artifacts.load_tokenizer(modality)
    t = spec.config.train
    assert tok.config == train.with_dead_code_threshold(spec.tokenizer, t.batch_size, spec.config.image_size,
                                                        t.coef_ema_dead_code)
    assert set(variables) == {"params", "buffers"}

    quality = json.loads((artifacts.resolve(modality) / artifacts.QUALITY_FILE).read_text())
    assert quality["steps"] == t.steps
    assert quality["split"] == spec.config.eval_split and quality["examples"] > 0
    expected = {"codebook_usage", "perplexity", *QUALITY_METRICS[stored["field"]]}
    assert expected <= set(quality["held_out"])
