"""Converts ml-4m's pre-tokenized webdataset shards into our ArrayRecord + TFDS format.

    python tools/import_ml4m_shards.py --src /data/cc12m/train \
        --folders rgb,caption,det,crop_settings,tok_rgb@224,tok_depth@224 \
        --out /data/ours/cc12m/1.0.0 [--name cc12m] [--split train] [--workers 2]

`--src` holds one folder per modality (`<src>/<folder>/shard-XXXXX.tar`, aligned across folders, as
ml-4m's README_DATA describes). Each ml-4m shard becomes one of our shards; rerunning the command
after an interruption converts only the shards still missing. Prints a JSON summary.
"""

import argparse
import json
import sys

from fourm_jax.data import ml4m_import, records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, help="root holding one folder per modality")
    parser.add_argument("--folders", required=True,
                        help="comma-separated modality folders to import (field names keep them)")
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--name", default="ml4m", help="dataset name in the TFDS metadata")
    parser.add_argument("--split", default="train")
    parser.add_argument("--workers", type=int, default=0, help="worker processes (0: this one)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    folders = [f for f in args.folders.split(",") if f]
    directory = ml4m_import.import_ml4m_shards(args.src, args.out, folders, name=args.name,
                                               split=args.split, num_workers=args.workers,
                                               progress=not args.no_progress)
    dataset = records.open_dataset(directory, args.split)
    print(json.dumps(dict(dataset_dir=str(directory), split=args.split, records=len(dataset),
                          shards=len(dataset.files), fields=sorted(dataset.features))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
