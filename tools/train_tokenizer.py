"""Trains a modality tokenizer from a spec (tokenizers/*.py) and optionally exports it.

    python tools/train_tokenizer.py --config=tokenizers/scenes_rgb.py --workdir runs/tok/rgb \
        [--config.train.steps=500 --config.data_dir=data ...] [--export tokenizers/scenes_64/rgb]

The run resumes from the latest checkpoint in --workdir (same spec and overrides required). Metrics
go to <workdir>/metrics.jsonl and <workdir>/tensorboard. --export writes the variables (the EMA copy
when the recipe keeps one, or --export_weights live) in ml-4m's format with the spec and their
held-out quality (fourm_jax.tokenizers.artifacts; load with `artifacts.load_tokenizer(dir)`);
rerunning a finished run only evaluates and exports. A spec whose dataset
is the built-in `scenes/<size>px` builds it under data_dir first if it is missing.
"""

import argparse
import json
import pathlib
import re
import sys
import time

import jax

from fourm_jax.data import scenes_dataset
from fourm_jax.tokenizers import artifacts, specs, trainer

CONFIG_OVERRIDE = re.compile(r"--config\.(.+)")


def parse(argv):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="tokenizer spec file (path.py[:arg])")
    parser.add_argument("--workdir", required=True, help="checkpoints and metrics of the run")
    parser.add_argument("--export", help="also write the trained tokenizer to this artifact directory")
    parser.add_argument("--export_weights", choices=("ema", "live"),
                        help="which variables to export (default: the EMA copy when the recipe keeps one)")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    for arg in rest:
        match = CONFIG_OVERRIDE.fullmatch(arg)
        if not match or "=" not in match.group(1):
            parser.error(f"unrecognized argument {arg!r} (overrides are --config.a.b=value)")
        overrides.append(match.group(1))
    return args, overrides


def ensure_scenes(spec: specs.Spec) -> None:
    """Builds the built-in scenes dataset the spec names if it is not there yet."""
    match = re.fullmatch(r"scenes/(\d+)px", spec.config.dataset)
    if spec.config.format != "tfds" or not match:
        return
    size = int(match.group(1))
    if not (scenes_dataset.dataset_dir(spec.config.data_dir, size) / "dataset_info.json").exists():
        print(f"building {spec.config.dataset} under {spec.config.data_dir} (10,000 + 500 scenes)")
        scenes_dataset.build(spec.config.data_dir, image_size=size, num_workers=2)


def main(argv=None) -> int:
    args, overrides = parse(sys.argv[1:] if argv is None else argv)
    spec = specs.load(args.config, overrides)
    ensure_scenes(spec)
    began = time.perf_counter()
    run = trainer.train(spec, args.workdir)
    if args.export:
        kind = args.export_weights or run.default_kind
        if kind not in run.variables:
            raise SystemExit(f"--export_weights {kind}: the run keeps no such variables "
                             f"({sorted(run.variables)})")
        quality = dict(held_out=run.metrics.get(kind, {}), steps=run.step, dataset=spec.config.dataset,
                       split=spec.config.eval_split, examples=run.held_out_examples, weights=kind,
                       seconds_this_invocation=round(time.perf_counter() - began),
                       devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}")
        directory = artifacts.save(args.export, run.tokenizer, run.variables[kind], trainer.spec_json(spec),
                                   quality)
        print(f"exported to {directory}")
    print(json.dumps(dict(step=run.step, workdir=str(pathlib.Path(args.workdir)), held_out=run.metrics)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
