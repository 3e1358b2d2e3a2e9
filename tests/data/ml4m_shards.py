"""Small synthetic datasets in ml-4m's on-disk layouts (webdataset tars, image folders), for tests.

Every value is a function of the sample index, so tests can compare what a reader returns with
`expected_sample(i)`.
"""

from __future__ import annotations

import io
import json
import pathlib
import tarfile

import numpy as np
from PIL import Image

TOKEN_MODALITIES = {"tok_rgb@224": 16384, "tok_depth@224": 8192}
N_CROPS = 3
NUM_TOKENS = 196
IMAGE_SHAPE = (40, 56, 3)  # a non-square "original" image, as ml-4m's crop settings assume


def expected_sample(i: int) -> dict:
    rng = np.random.default_rng(1000 + i)
    sample = {name: rng.integers(0, vocab, size=(N_CROPS, NUM_TOKENS)).astype(np.int16)
              for name, vocab in TOKEN_MODALITIES.items()}
    height, width = IMAGE_SHAPE[:2]
    sample["crop_settings"] = np.array(
        [[0, (width - height) // 2, height, height, 0], [2, 3, 30, 30, 1], [5, 10, 28, 35, 0]],
        np.int64)
    sample["rgb"] = rng.integers(0, 256, size=IMAGE_SHAPE).astype(np.uint8)
    sample["caption"] = [f"a photo number {i}, crop {c}" for c in range(N_CROPS)]
    n = i % 3
    sample["det"] = {"instances": [
        {"boxes": [0.1 * k, 0.2, 0.1 * k + 0.3, 0.9], "class_name": ["dog", "person", "car"][k],
         "score": 0.5 + 0.2 * k} for k in range(n)]}
    sample["metadata"] = {"brightness": float(i), "n_humans": i % 2}
    return sample


def _encode(folder: str, value) -> tuple[str, bytes]:
    if folder == "rgb":
        buffer = io.BytesIO()
        Image.fromarray(value).save(buffer, format="PNG")
        return "png", buffer.getvalue()
    if isinstance(value, np.ndarray):
        buffer = io.BytesIO()
        np.save(buffer, value)
        return "npy", buffer.getvalue()
    return "json", json.dumps(value).encode()


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


def write_ml4m_shards(root: pathlib.Path, folders, num_shards: int = 2, per_shard: int = 3,
                      start: int = 0) -> list[int]:
    """Writes root/<folder>/shard-XXXXX.tar for each folder; returns the sample indices written."""
    indices = []
    for shard in range(num_shards):
        shard_indices = [start + shard * per_shard + k for k in range(per_shard)]
        indices += shard_indices
        for folder in folders:
            (root / folder).mkdir(parents=True, exist_ok=True)
            with tarfile.open(root / folder / f"shard-{shard:05d}.tar", "w") as archive:
                for i in shard_indices:
                    extension, data = _encode(folder, expected_sample(i)[folder])
                    _add(archive, f"sample{i:06d}.{extension}", data)
    return indices


def write_image_folders(root: pathlib.Path, folders, count: int) -> None:
    """root/<folder>/<class>/<key>.<ext> for `count` samples, as ml-4m's folder datasets."""
    for i in range(count):
        for folder in folders:
            extension, data = _encode(folder, expected_sample(i)[folder])
            path = root / folder / f"class{i % 2}" / f"img{i:04d}.{extension}"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
