"""Builds the built-in `scenes` dataset (procedural 3-D scenes) in our ArrayRecord + TFDS format.

    python tools/build_scenes.py [--data_dir data] [--num_train 10000] [--num_validation 500] \
        [--image_size 64] [--seed 0] [--workers 2] [--grid docs/scenes_grid.png]

Writes `<data_dir>/scenes/<size>px/1.0.0/` (TFDS name `scenes/<size>px`) with a progress bar;
rerunning after an interruption renders only the missing shards. `--grid` also saves a PNG of a
few validation examples: RGB, depth, normals, segmentation with boxes, caption. Prints a JSON
summary.
"""

import argparse
import json
import sys
import textwrap
import time

import numpy as np

from fourm_jax.data import records, scenes, scenes_dataset


def save_grid(dataset: records.RecordSource, path: str, count: int = 6) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt

    palette = plt.get_cmap("tab10")(np.arange(len(scenes.CLASS_NAMES)))[:, :3]
    palette[0] = (0.85, 0.9, 0.95)
    columns = ("RGB", "depth", "normals", "segmentation + boxes", "caption")
    figure, axes = plt.subplots(count, 5, figsize=(15, 2.9 * count),
                                gridspec_kw=dict(width_ratios=[1, 1, 1, 1, 1.6]))
    for row in range(count):
        record = dataset[row]
        depth = np.ma.masked_equal(record["depth"], 0)
        panels = [record["rgb"], None, record["normal"], palette[record["semseg"][..., 0]]]
        for column, image in enumerate(panels):
            axis = axes[row, column]
            if column == 1:
                axis.imshow(depth, cmap="magma_r")
            else:
                axis.imshow(image)
            axis.set_xticks([])
            axis.set_yticks([])
        size = record["rgb"].shape[0]
        for box, name in zip(record["det"]["boxes"], record["det"]["class_name"], strict=True):
            x0, y0, x1, y1 = box * size - 0.5
            color = palette[scenes.CLASS_NAMES.index(name)] * 0.6
            axes[row, 3].add_patch(patches.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False,
                                                     edgecolor=color, linewidth=1.2))
            axes[row, 3].text(x0, y0 - 0.8, name, color=color, fontsize=6.5, va="bottom")
        axes[row, 4].axis("off")
        axes[row, 4].text(0, 0.5, "\n".join(textwrap.wrap(record["caption"], 52)), fontsize=8,
                          va="center", family="monospace")
    for column, title in enumerate(columns):
        axes[0, column].set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default="data")
    parser.add_argument("--num_train", type=int, default=10_000)
    parser.add_argument("--num_validation", type=int, default=500)
    parser.add_argument("--image_size", type=int, default=scenes_dataset.DEFAULT_IMAGE_SIZE)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shard_size", type=int, default=500)
    parser.add_argument("--workers", type=int, default=2, help="render processes")
    parser.add_argument("--grid", help="also save a PNG grid of validation examples here")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    directory = scenes_dataset.build(
        args.data_dir, num_train=args.num_train, num_validation=args.num_validation,
        image_size=args.image_size, seed=args.seed, shard_size=args.shard_size,
        num_workers=args.workers, progress=not args.no_progress)
    seconds = time.perf_counter() - start
    if args.grid:
        split = "validation" if args.num_validation else "train"
        save_grid(records.open_dataset(directory, split), args.grid)
    print(json.dumps(dict(dataset_dir=str(directory), tfds_name=scenes_dataset.tfds_name(args.image_size),
                          num_train=args.num_train, num_validation=args.num_validation,
                          image_size=args.image_size, seconds=round(seconds, 1))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
