"""tools/bench_tokenize.py runs on a spec and reports encode and decode throughput."""

import argparse
import importlib
import sys


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
