"""Converts ml-4m's pre-tokenized webdataset shards into our ArrayRecord format.

ml-4m shard `root/<folder>/<shard>.tar` (one tar per modality folder, aligned) becomes our shard
of the same position, so a conversion can be resumed shard by shard. Fields keep ml-4m's folder
names. What each becomes:

    token grids (.npy, int [n_crops, N])  int16 [n_crops, N]   (values must fit int16, as in ml-4m)
    crop_settings (.npy)                  int32 [n_crops, 5]
    images (.jpg/.png, ...)               the original encoded bytes, plus `image_size` (H, W)
    caption (.txt/.json)                  list of str (one per crop when ml-4m aligned them)
    det (.json)                           boxes / class_name / score arrays
    other .json (metadata, palettes, ...) JSON text, parsed again on reading
    other .txt                            str

T5 caption embeddings (.npz) and SAM instances (pickled .npy) have no representation here yet:
exclude those folders.
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from fourm_jax.data import records, sources
from fourm_jax.data.errors import DataError


def _kind(field: str, extension: str, value: Any) -> str:
    if extension in sources.IMAGE_EXTENSIONS:
        return "image"
    if field == records.CROP_SETTINGS_FIELD:
        return "crop_settings"
    if extension == "npy":
        if value.dtype.kind in "iu" and value.ndim in (1, 2):
            return "tokens"
        raise DataError(f"unsupported .npy array (shape {value.shape}, dtype {value.dtype}); "
                        "expected integer token ids [n_crops, N]", field=field)
    if extension == "npz":
        raise DataError("T5 caption embeddings (.npz) are not supported; exclude this folder",
                        field=field)
    if field.startswith("caption"):
        return "caption"
    if field.startswith("det"):
        return "det"
    if extension in ("json", "json.gz"):
        return "json"
    return "text"


def _feature(kind: str, value: Any, image: np.ndarray | None):
    if kind == "image":
        return records.image_feature(image.shape[2] if image.ndim == 3 else 1,
                                     dtype=image.dtype.type)
    if kind == "crop_settings":
        return records.crop_settings_feature()
    if kind == "tokens":
        return records.token_grid_feature(value.shape[-1])
    if kind == "caption":
        return records.text_list_feature()
    if kind == "det":
        return records.detections_feature()
    return records.text_feature()


def _convert(kind: str, field: str, value: Any, raw: bytes) -> Any:
    if kind == "image":
        return raw  # stored as encoded, not re-compressed
    if kind == "tokens":
        tokens = value.reshape(-1, value.shape[-1])
        if tokens.size and (tokens.min() < np.iinfo(np.int16).min
                            or tokens.max() > np.iinfo(np.int16).max):
            raise DataError(f"token ids span [{tokens.min()}, {tokens.max()}], beyond int16",
                            field=field)
        return tokens.astype(np.int16)
    if kind == "crop_settings":
        return np.asarray(value, np.int32).reshape(-1, 5)
    if kind == "caption":
        return [value] if isinstance(value, str) else value
    return value


class ShardConverter:
    """Reads one ml-4m shard and yields our records; picklable for worker processes."""

    def __init__(self, root: str | os.PathLike, fields: Mapping[str, str], shards: Sequence[str]):
        self.root = pathlib.Path(root)
        self.fields = dict(fields)
        self.shards = list(shards)
        probe = sources.Ml4mShardSource(self.root, self.fields, shards=self.shards[:1])
        if not len(probe):
            raise DataError("the first shard holds no samples", file=str(self.root))
        raw = probe.read_raw(0)
        decoded = probe[0]
        self.kinds = {field: _kind(field, extension, decoded[field])
                      for field, (extension, _) in raw.items()}
        images = [field for field, kind in self.kinds.items() if kind == "image"]
        self.size_field = "rgb" if "rgb" in images else (images[0] if images else None)
        features = {field: _feature(kind, decoded[field],
                                    decoded[field] if kind == "image" else None)
                    for field, kind in self.kinds.items()}
        if self.size_field is not None:
            features[records.IMAGE_SIZE_FIELD] = records.image_size_feature()
        self.features = features
        self.json_fields = [field for field, kind in self.kinds.items() if kind == "json"]

    def __call__(self, shard_index: int):
        source = sources.Ml4mShardSource(self.root, self.fields, shards=[self.shards[shard_index]])
        for index in range(len(source)):
            file, position, key = source.location(index)
            raw = source.read_raw(index)
            record = {}
            for field, (extension, data) in raw.items():
                kind = self.kinds.get(field)
                if kind is None:
                    raise DataError(f"sample {key!r} has a field the first shard lacks", file=file,
                                    index=position, field=field)
                try:
                    value = None if kind == "image" else sources.decode_member(field, extension, data)
                    record[field] = _convert(kind, field, value, data)
                except DataError as error:
                    raise error.located(file=file, index=position, field=field) from None
            if self.size_field is not None:
                with Image.open(io.BytesIO(raw[self.size_field][1])) as image:
                    record[records.IMAGE_SIZE_FIELD] = np.array([image.height, image.width], np.int32)
            yield record


def import_ml4m_shards(root: str | os.PathLike, dataset_dir: str | os.PathLike,
                       folders: Sequence[str] | Mapping[str, str], *, name: str = "ml4m",
                       split: str = "train", num_workers: int = 0,
                       progress: bool = True) -> pathlib.Path:
    """Converts every shard under root/<folder>/ (all folders aligned) into one split of our format.

    `folders`: folder names (fields keep them) or {field: folder}. Rerunning resumes: shards
    already converted are kept. Returns the dataset directory (open it with records.open_dataset).
    """
    fields = dict(folders) if isinstance(folders, Mapping) else {f: f for f in folders}
    first = pathlib.Path(root) / next(iter(fields.values()))
    shards = sorted(p.name for p in first.glob("*.tar"))
    if not shards:
        raise DataError("no *.tar shards found", file=str(first))
    converter = ShardConverter(root, fields, shards)
    writer = records.DatasetWriter(
        dataset_dir, name, converter.features, json_fields=converter.json_fields,
        description=f"Imported from ml-4m webdataset shards at {root}",
        metadata=dict(source=str(root), folders=fields, shards=shards))
    records.write_split(writer, split, len(shards), converter, num_workers=num_workers,
                        progress=progress)
    return writer.finalize({split: len(shards)})
