"""tools/bench_tokenize.py runs on a spec and reports encode and decode throughput."""

import argparse
import importlib
import sys

import pytest


def test_bench_tokenize_reports_rates(repo_dir):
    sys.path.insert(0, str(repo_dir / "tools"))
    try:
        bench = importlib.import_module("bench_tokenize")
    finally:
        sys.path.remove(str(repo_dir / "tools"))
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    tiny = [f"tokenizer.{part}.{field}" for part in ("encoder", "decoder") for field in ("dim=32", "depth=1")]
    spec = str(repo_dir / "tokenizers" / "scenes_semseg.py")
    args = parser.parse_args(["--spec", spec, "--batch-size", "8", "--iters", "1", "--repeats", "1",
                              *[f"--override={o}" for o in tiny]])
    result = bench.run(args)
    assert result["modality"] == "semseg" and result["tokens_per_image"] == 64
    assert result["encode_images_per_s"] > 0 and result["decode_images_per_s"] > 0


def test_bench_pretokenize_reports_images_per_second(repo_dir, tmp_path):
    import jax

    from fourm_jax.tokenizers import VQVAE, NetConfig, TokenizerConfig, artifacts

    sys.path.insert(0, str(repo_dir / "tools"))
    try:
        bench = importlib.import_module("bench_tokenize")
    finally:
        sys.path.remove(str(repo_dir / "tools"))
    vit = NetConfig("vit", 32, 1, 2)
    tok = VQVAE(TokenizerConfig(image_size=64, patch_size=8, encoder=vit, decoder=None, codebook_size=32,
                                latent_dim=8))
    artifacts.save(tmp_path / "rgb", tok, jax.device_get(tok.init(jax.random.key(0))),
                   dict(field="rgb", image_size=64), {})
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--pretokenize", "--tokenizers", str(tmp_path / "rgb"), "--examples", "8",
                              "--n-crops", "2", "--batch-size", "8"])
    result = bench.run(args)
    assert result["outputs"] == ["tok_rgb@64"] and result["examples"] == 8 and result["n_crops"] == 2
    assert result["images_per_s"] > 0
    assert result["crops_per_s"] == pytest.approx(2 * result["images_per_s"], rel=0.02)
