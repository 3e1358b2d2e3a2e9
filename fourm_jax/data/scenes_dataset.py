"""The built-in `scenes` dataset: rendered scenes (scenes.py) written in our ArrayRecord format.

Layout: `<data_dir>/scenes/<size>px/1.0.0/` (TFDS name `scenes/<size>px`), splits `train` and
`validation`. Fields per example:

    rgb            uint8 [S, S, 3] (PNG)
    depth          float32 [S, S] camera-space z, 0 where no surface (zlib)
    normal         uint8 [S, S, 3] camera-frame normals, (n + 1) / 2 * 255 (PNG)
    semseg         uint8 [S, S, 1] index into metadata `class_names` (PNG)
    det            boxes float32 [n, 4] normalised xmin, ymin, xmax, ymax; class_name; score (= 1)
    caption        str, written from the scene graph
    metadata       JSON: ml-4m metadata keys (image statistics, caption counts, instance counts)
    color_palette  JSON: ml-4m palette layout, [{"1": [[r, g, b]], ..., "7": [...]}]
    scene          JSON: the scene graph (objects, camera, light), for evaluation

Example i of a split is a pure function of (seed, split, i): builds are reproducible and resumable.
"""

from __future__ import annotations

import functools
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from fourm_jax.data import image_stats, records, scenes

NAME = "scenes"
VERSION = "1.0.0"
SPLITS = ("train", "validation")
JSON_FIELDS = ("metadata", "color_palette", "scene")
DEFAULT_IMAGE_SIZE = 64


def config_name(image_size: int) -> str:
    return f"{image_size}px"


def tfds_name(image_size: int = DEFAULT_IMAGE_SIZE) -> str:
    """Name for `records.open_dataset(name, data_dir=...)` / `tfds.data_source`."""
    return f"{NAME}/{config_name(image_size)}"


def dataset_dir(data_dir: str | os.PathLike, image_size: int = DEFAULT_IMAGE_SIZE) -> pathlib.Path:
    return pathlib.Path(data_dir) / NAME / config_name(image_size) / VERSION


def features(image_size: int) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "rgb": records.image_feature(3, image_size),
        "depth": records.float_map_feature(image_size),
        "normal": records.image_feature(3, image_size),
        "semseg": records.image_feature(1, image_size),
        "det": records.detections_feature(),
        "caption": records.text_feature(),
        "metadata": records.text_feature(),
        "color_palette": records.text_feature(),
        "scene": records.text_feature(),
    })


def example(seed: int, split: str, index: int, image_size: int = DEFAULT_IMAGE_SIZE) -> dict:
    """Example `index` of `split`, as the writer takes it (JSON fields as Python objects)."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    scene = scenes.sample_scene(rng)
    rendering = scenes.render(scene, image_size)
    text = scenes.caption(scene, rendering, rng)
    visible = scenes.visible_objects(rendering)
    metadata = image_stats.image_metadata(rendering.rgb, text)
    metadata.update(n_sam_instances=len(visible),
                    semantic_diversity=int(len(np.unique(rendering.semseg))),
                    objectness=float((rendering.instance >= 0).mean()))
    return {
        "rgb": rendering.rgb, "depth": rendering.depth, "normal": rendering.normal,
        "semseg": rendering.semseg[..., None], "det": scenes.detections(scene, rendering),
        "caption": text, "metadata": metadata,
        "color_palette": image_stats.color_palette(rendering.rgb, rng),
        "scene": scene.to_json(),
    }


def _shard_examples(seed: int, split: str, image_size: int, shard_size: int, total: int,
                    shard: int):
    for index in range(shard * shard_size, min((shard + 1) * shard_size, total)):
        yield example(seed, split, index, image_size)


def writer(data_dir: str | os.PathLike, image_size: int, seed: int) -> records.DatasetWriter:
    return records.DatasetWriter(
        dataset_dir(data_dir, image_size), NAME, features(image_size), json_fields=JSON_FIELDS,
        version=VERSION,
        description="Procedural 3-D scenes (fourm_jax built-in): RGB, depth, normals, semantic "
                    "segmentation, boxes, captions, metadata and colour palettes.",
        metadata=dict(class_names=list(scenes.CLASS_NAMES), image_size=image_size, seed=seed,
                      shapes=list(scenes.SHAPES), colors=list(scenes.COLORS),
                      materials=list(scenes.MATERIALS), sizes=list(scenes.SIZES)))


def build(data_dir: str | os.PathLike, *, num_train: int = 10_000, num_validation: int = 500,
          image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0, shard_size: int = 500,
          num_workers: int = 0, progress: bool = True) -> pathlib.Path:
    """Renders and writes the dataset (resuming a partial build); returns its directory.

    A finished dataset with the same settings is left as it is; one with other settings is an error
    (delete it or choose another data_dir).
    """
    out = writer(data_dir, image_size, seed)
    sizes = {split: n for split, n in zip(SPLITS, (num_train, num_validation), strict=True) if n}
    if (out.dataset_dir / "dataset_info.json").exists():
        existing = records.open_dataset(out.dataset_dir, "train", verify=False)
        have = {split: info.num_examples for split, info in existing.info.splits.items()}
        if existing.info.metadata.get("seed") == seed and have == sizes:
            return out.dataset_dir
        raise FileExistsError(f"{out.dataset_dir} already holds a scenes build with other settings "
                              f"(seed {existing.info.metadata.get('seed')}, sizes {have}); "
                              "remove it or use another data_dir")
    num_shards = {}
    for split, total in sizes.items():
        num_shards[split] = max(1, -(-total // shard_size))
        make = functools.partial(_shard_examples, seed, split, image_size, shard_size, total)
        records.write_split(out, split, num_shards[split], make, total=total,
                            num_workers=num_workers, progress=progress)
    return out.finalize(num_shards)
