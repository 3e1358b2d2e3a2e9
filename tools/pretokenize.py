"""Pretokenizes a dataset into a 4M training dataset (ml-4m's save_vq_tokens.py, all modalities at once).

    python tools/pretokenize.py --source scenes/64px --data_dir data \
        --tokenizers scenes_64 --out data/scenes_tok/64px/1.0.0 --n_crops 4 [--drop depth,normal,semseg]

--source: a dataset directory or TFDS name (our ArrayRecord format, resolved under --data_dir), or
`image_folder:<root>` (ml-4m's folder layout, `<root>/<split>/<modality>/...`). --tokenizers: a
comma-separated list of `[field=]tokenizer`, where a tokenizer is an artifact directory or name
(fourm_jax.tokenizers.artifacts: `scenes_64/rgb`, `tok_rgb@64`, ...) or a folder of artifacts
(`scenes_64`: all of them); the field defaults to the one its spec trained on, the output field is
`tok_<field>@<size>`. Every other source field is copied (minus --drop). Rerun the same command
after an interruption to resume. Prints a JSON summary.
"""

import argparse
import json
import pathlib
import sys
import time

from fourm_jax.data import pretokenize
from fourm_jax.tokenizers import artifacts, ml4m


def expand(item: str) -> list[tuple[str | None, str]]:
    """`[field=]name_or_dir` -> (field or None, artifact); a folder of artifacts -> all of them."""
    field, _, name = item.rpartition("=")
    for folder in (artifacts.SHIPPED_DIR / name, pathlib.Path(name)):
        if folder.is_dir() and not (folder / ml4m.WEIGHTS_FILE).exists():
            found = sorted(p for p in folder.iterdir() if (p / ml4m.WEIGHTS_FILE).is_file())
            if found:
                if field:
                    raise SystemExit(f"--tokenizers {item}: a field applies to one tokenizer, not a folder")
                return [(None, str(p)) for p in found]
    return [(field or None, name)]


def jobs(spec: str) -> list[pretokenize.Job]:
    out = []
    for item in spec.split(","):
        for field, name in expand(item.strip()):
            tokenizer, variables = artifacts.load_tokenizer(name)
            trained = artifacts.read_spec(name)
            field = field or trained["field"]
            output = artifacts.token_modality(dict(field=field, image_size=tokenizer.config.image_size))
            out.append(pretokenize.Job(field, output, tokenizer, variables,
                                       name=str(artifacts.resolve(name))))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True)
    parser.add_argument("--data_dir", default=None)
    parser.add_argument("--splits", default="train,validation")
    parser.add_argument("--tokenizers", required=True)
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--name", default="pretokenized", help="dataset name (shard file prefix)")
    parser.add_argument("--n_crops", type=int, default=4)
    parser.add_argument("--min_crop_scale", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch_size", type=int, default=256, help="crops per encode call (all devices)")
    parser.add_argument("--shard_size", type=int, default=256, help="records per output shard")
    parser.add_argument("--drop", default="", help="comma-separated source fields not to copy")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    splits = [s for s in args.splits.split(",") if s]
    started = time.perf_counter()
    pretokenizer = pretokenize.Pretokenizer(jobs(args.tokenizers), n_crops=args.n_crops,
                                            min_crop_scale=args.min_crop_scale, seed=args.seed,
                                            batch_size=args.batch_size)
    directory = pretokenizer.write(
        lambda split: pretokenize.open_source(args.source, split, data_dir=args.data_dir), splits, args.out,
        name=args.name, drop=[f for f in args.drop.split(",") if f], shard_size=args.shard_size,
        source_name=args.source, progress=not args.no_progress)
    print(json.dumps(dict(out=str(directory), splits=splits, n_crops=args.n_crops,
                          outputs=[job.output for job in pretokenizer.jobs],
                          seconds=round(time.perf_counter() - started, 1))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
