"""Pretokenization: a dataset -> a 4M training dataset of token grids, as ml-4m's save_vq_tokens.py.

For every record, K crop settings are drawn once and shared by every modality (row 0 the centre
square without flip, rows 1.. random resized crops of scale [min_crop_scale, 1] flipped with
probability 1/2; `transforms.sample_crop_settings`); each tokenized field is cut to every crop,
resized to its tokenizer's size, flipped (normals negate x) and encoded. The output record holds

    tok_<field>@<size>   int16 [K, N] token ids (N = the tokenizer's token grid, row-major)
    crop_settings        int32 [K, 5] top, left, height, width, hflip in original pixels
    image_size           int32 [2] the original height, width
    every other field    copied through (caption, det, metadata, color_palette, rgb pixels, ...)

in our ArrayRecord + TFDS-metadata format (fourm_jax.data.records), so fourm_jax.data.pipeline
reads it with any 4M mixture. Shards are written atomically; rerunning with the same settings
resumes (finished shards are kept) and writes exactly what an uninterrupted run writes: crop
settings are a function of (seed, split, record index) and every shard is encoded in the same
batches. Encoding runs jit-compiled on every device of the mesh (batch split over its batch axes,
the last batch of a shard padded to the full batch size, so one program serves every batch).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds

from fourm_jax import sharding
from fourm_jax.data import records, sources, transforms
from fourm_jax.data.errors import DataError
from fourm_jax.tokenizers import compiled
from fourm_jax.tokenizers.vqvae import VQVAE

SETTINGS_FILE = "pretokenize.json"  # in the output directory: what a resumed run must repeat
METADATA_KEY = "pretokenize"  # metadata.json: the settings, for readers


@dataclasses.dataclass(frozen=True)
class Job:
    """One source field encoded by one tokenizer into the field `output` (e.g. tok_rgb@64)."""

    field: str
    output: str
    tokenizer: VQVAE
    variables: Any
    name: str = ""  # where the tokenizer came from, recorded in the settings

    @property
    def size(self) -> int:
        return self.tokenizer.config.image_size

    @property
    def num_tokens(self) -> int:
        return int(np.prod(self.tokenizer.config.token_shape(self.size, self.size)))


def crop_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(split.encode()), index])


class Pretokenizer:
    """Compiled encoders for a set of jobs; `write` turns splits of a source into a dataset."""

    def __init__(self, jobs: Sequence[Job], *, n_crops: int, min_crop_scale: float = 0.8, seed: int = 0,
                 batch_size: int = 256, mesh: jax.sharding.Mesh | None = None):
        if not jobs:
            raise ValueError("no tokenizers given")
        outputs = [job.output for job in jobs]
        if len(set(outputs)) != len(outputs):
            raise ValueError(f"two tokenizers write the same field: {outputs}")
        for job in jobs:
            if job.tokenizer.config.codebook_size > np.iinfo(np.int16).max + 1:
                raise ValueError(f"{job.output}: codebook of {job.tokenizer.config.codebook_size} codes does "
                                 "not fit int16 tokens")
        if n_crops < 1 or not 0 < min_crop_scale <= 1:
            raise ValueError(f"need n_crops >= 1 and 0 < min_crop_scale <= 1, got {n_crops}, "
                             f"{min_crop_scale}")
        self.jobs = list(jobs)
        self.n_crops, self.min_crop_scale, self.seed = n_crops, min_crop_scale, seed
        self.mesh = mesh or sharding.make_mesh(dict(data=-1))
        self.data_sharding = compiled.batch_sharding(self.mesh)
        devices = self.mesh.size
        self.batch_size = -(-batch_size // devices) * devices  # a multiple of the devices
        self._encoders = [compiled.encode_fn(job.tokenizer, self.mesh, raw=True) for job in self.jobs]
        self._variables = [compiled.replicate(job.variables, self.mesh) for job in self.jobs]

    def settings(self) -> dict[str, Any]:
        """What determines the output, which a resumed run must repeat: crops, seed, batch size and
        per output field its source field, tokenizer config and a digest of its weights."""
        return dict(n_crops=self.n_crops, min_crop_scale=self.min_crop_scale, seed=self.seed,
                    batch_size=self.batch_size,
                    tokenizers={job.output: dict(field=job.field, weights_sha256=_digest(job.variables),
                                                 config=json.loads(job.tokenizer.config.to_config().to_json()))
                                for job in self.jobs})

    # ------------------------------------------------------------------ per record

    def crop_settings(self, record: Mapping[str, Any], split: str, index: int) -> tuple[np.ndarray, tuple]:
        """(crop settings [K, 5], (height, width)) of a record; every tokenized field must share the size."""
        sizes = {}
        for job in self.jobs:
            if job.field not in record:
                present = sorted(k for k in record if not k.startswith("_"))
                raise DataError(f"missing (tokenizer {job.output!r} reads it; the record has {present})",
                                field=job.field)
            sizes[job.field] = tuple(np.shape(record[job.field])[:2])
        if len(set(sizes.values())) > 1:
            raise DataError(f"tokenized fields differ in size: {sizes}", field=self.jobs[0].field)
        height, width = next(iter(sizes.values()))
        settings = transforms.sample_crop_settings(crop_rng(self.seed, split, index), height, width,
                                                   self.n_crops, self.min_crop_scale)
        return settings, (height, width)

    def tokenize(self, examples: Sequence[Mapping[str, Any]], split: str, first_index: int) -> list[dict]:
        """Token grids, crop settings and image size of consecutive records (global indices from
        `first_index`), added to copies of the records."""
        crops, out = [], []
        for offset, record in enumerate(examples):
            where = dict(file=record.get(records.FILE_KEY), index=record.get(records.INDEX_KEY))
            try:
                settings, size = self.crop_settings(record, split, first_index + offset)
            except DataError as error:
                raise error.located(**where) from None
            crops.append(settings)
            out.append(dict(record, **{records.CROP_SETTINGS_FIELD: settings,
                                       records.IMAGE_SIZE_FIELD: np.array(size, np.int32)}))
        pending = []
        for job, encode, variables in zip(self.jobs, self._encoders, self._variables, strict=True):
            raw = []
            for record, settings in zip(examples, crops, strict=True):
                try:
                    raw.extend(transforms.crop_image(job.tokenizer.config.modality, record[job.field], row,
                                                     job.size, job.field) for row in settings)
                except DataError as error:
                    raise error.located(file=record.get(records.FILE_KEY),
                                        index=record.get(records.INDEX_KEY)) from None
            pending.append(self._encode_all(encode, variables, np.stack(raw)))  # dispatched, not waited for
        for job, batches in zip(self.jobs, pending, strict=True):
            tokens = np.concatenate([np.asarray(b).reshape(len(b), -1) for b in batches])
            tokens = tokens.astype(np.int16).reshape(len(examples), self.n_crops, job.num_tokens)
            for record, grid in zip(out, tokens, strict=True):
                record[job.output] = grid
        return out

    def _encode_all(self, encode, variables, raw: np.ndarray) -> list[jax.Array]:
        batches = []
        for start in range(0, len(raw), self.batch_size):
            chunk = raw[start:start + self.batch_size]
            if len(chunk) < self.batch_size:  # pad with copies of the first row; dropped afterwards
                chunk = np.concatenate([chunk, np.repeat(chunk[:1], self.batch_size - len(chunk), 0)])
            batches.append(encode(variables, jax.device_put(chunk, self.data_sharding))[:len(raw) - start])
        return batches

    # ------------------------------------------------------------------ whole datasets

    def write(self, open_split, splits: Sequence[str], out_dir: str | os.PathLike, *,
              name: str = "pretokenized", drop: Sequence[str] = (), shard_size: int = 256,
              source_name: str = "", progress: bool = True) -> pathlib.Path:
        """Pretokenizes `splits` of a source (`open_split(split)` -> a random-access source of
        records) into the dataset directory `out_dir`; resumes a partial run with the same settings."""
        out_dir = pathlib.Path(out_dir)
        opened = {split: open_split(split) for split in splits}
        features, json_fields, metadata = output_features(opened[splits[0]], self.jobs, drop)
        settings = dict(self.settings(), source=source_name, splits=list(splits), drop=sorted(drop),
                        shard_size=shard_size)
        _check_settings(out_dir, settings)
        sources_of = {job.output: job.name for job in self.jobs}
        writer = records.DatasetWriter(out_dir, name, features, json_fields=json_fields,
                                       metadata=dict(metadata, **{METADATA_KEY: dict(settings,
                                                                                      loaded_from=sources_of)}),
                                       description=f"{source_name} pretokenized by fourm_jax "
                                                   f"({', '.join(job.output for job in self.jobs)})")
        kept = [field for field in features if field not in self._added_fields()]
        num_shards = {}
        for split, source in opened.items():
            count = len(source)
            num_shards[split] = max(1, -(-count // shard_size))
            records.write_split(
                writer, split, num_shards[split],
                lambda shard, split=split, source=source, count=count: self._shard(
                    source, split, shard * shard_size, min((shard + 1) * shard_size, count), kept),
                total=count, progress=progress)
        return writer.finalize(num_shards)

    def _added_fields(self) -> set[str]:
        return {job.output for job in self.jobs} | {records.CROP_SETTINGS_FIELD, records.IMAGE_SIZE_FIELD}

    def _shard(self, source, split: str, start: int, stop: int, kept: list[str]) -> Iterator[dict]:
        examples = [source[index] for index in range(start, stop)]
        for example in self.tokenize(examples, split, start):
            yield {field: _writable(example[field]) for field in [*kept, *self._added_fields()]}


def _digest(variables) -> str:
    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(variables):
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(jax.device_get(leaf)).tobytes())
    return digest.hexdigest()


def _writable(value):
    """Records as sources return them -> what the writer takes (2-D images get their channel axis)."""
    if isinstance(value, np.ndarray) and value.dtype in (np.uint8, np.uint16) and value.ndim == 2:
        return value[..., None]
    return value


def _check_settings(out_dir: pathlib.Path, settings: dict) -> None:
    path = out_dir / SETTINGS_FILE
    if path.exists():
        previous = json.loads(path.read_text())
        if previous != json.loads(json.dumps(settings)):
            changed = sorted(k for k in set(previous) | set(settings)
                             if previous.get(k) != json.loads(json.dumps(settings.get(k))))
            raise ValueError(f"{out_dir} holds a pretokenization with other settings ({', '.join(changed)}); "
                             "remove it or write elsewhere")
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    temporary.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    os.replace(temporary, path)


def output_features(source, jobs: Sequence[Job], drop: Sequence[str]) -> tuple[dict, list[str], dict]:
    """(features, json fields, metadata) of the output: the source's fields minus `drop`, plus the
    token grids, crop settings and image size. Sources without TFDS features (image folders) have
    theirs inferred from their first record."""
    if isinstance(source, records.RecordSource):
        features = dict(source.features.items())
        json_fields = list(source.json_fields)
        metadata = {k: v for k, v in dict(source.info.metadata or {}).items() if k != records.JSON_FIELDS_KEY}
    else:
        features, json_fields = infer_features(source[0])
        metadata = {}
    unknown = sorted(set(drop) - set(features))
    if unknown:
        raise ValueError(f"cannot drop {unknown}: the source has no such field (it has {sorted(features)})")
    features = {k: v for k, v in features.items() if k not in drop}
    added = {job.output: records.token_grid_feature(job.num_tokens) for job in jobs}
    added[records.CROP_SETTINGS_FIELD] = records.crop_settings_feature()
    added[records.IMAGE_SIZE_FIELD] = records.image_size_feature()
    clash = sorted(set(added) & set(features))
    if clash:
        raise ValueError(f"the source already has {clash}; drop them (--drop) to pretokenize again")
    return dict(features, **added), [f for f in json_fields if f in features], metadata


def infer_features(record: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """TFDS features of a record in canonical form (sources.py), e.g. from an image folder."""
    features, json_fields = {}, []
    for field, value in record.items():
        if field.startswith("_"):
            continue
        if isinstance(value, np.ndarray) and value.dtype in (np.uint8, np.uint16) and value.ndim in (2, 3):
            channels = 1 if value.ndim == 2 else value.shape[-1]
            features[field] = tfds.features.Image(shape=(None, None, channels), dtype=value.dtype)
        elif isinstance(value, np.ndarray):
            features[field] = tfds.features.Tensor(shape=(None,) * value.ndim, dtype=value.dtype,
                                                   encoding="bytes")
        elif isinstance(value, str):
            features[field] = records.text_feature()
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            features[field] = records.text_list_feature()
        elif isinstance(value, Mapping) and "boxes" in value and "class_name" in value:
            features[field] = records.detections_feature()
        else:  # other JSON documents (metadata, palettes, poses)
            features[field] = records.text_feature()
            json_fields.append(field)
    return features, json_fields


def open_source(source: str, split: str, *, data_dir: str | None = None):
    """A split of a source: `image_folder:<root>` (ml-4m's layout, `<root>/<split>` when that
    exists; every modality folder becomes a field), else a dataset directory or TFDS name."""
    if source.startswith("image_folder:"):
        root = pathlib.Path(source.removeprefix("image_folder:"))
        if (root / split).is_dir():
            root = root / split
        folders = sorted(p.name for p in root.iterdir() if p.is_dir())
        if not folders:
            raise DataError("no modality folders", file=str(root))
        return sources.ImageFolderSource(root, folders)
    return records.open_dataset(source, split, data_dir=data_dir)
