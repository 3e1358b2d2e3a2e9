"""The one on-disk format: ArrayRecord shards with TFDS metadata, written and read without TensorFlow.

A dataset is a TFDS dataset directory `<data_dir>/<name>[/<config>]/<version>/` holding
`dataset_info.json`, `features.json`, `metadata.json` and the shards
`<name>-<split>.array_record-<i>-of-<n>`; each record is a `tf.train.Example` serialized by the
dataset's `tfds.features.FeaturesDict`. Anything TFDS can read as ArrayRecord (`tfds.data_source`)
therefore reads here, and our datasets read in TFDS.

Writing: `DatasetWriter` writes each shard to a temporary file and renames it into place, so a shard
on disk is always complete; `write_split` skips shards that already exist (resume after a crash),
runs shards in worker processes and shows a progress bar. `dataset_info.json` is written last: a
dataset directory without it is an unfinished build.

Reading: `open_dataset` returns a `RecordSource`, a random-access source for Grain whose records
are plain dicts (numpy arrays, `str`, lists of `str`, parsed JSON) plus their provenance (shard file
and record index in it), so every later error can say where the bad record lives.
"""

from __future__ import annotations

import bisect
import functools
import io
import json
import multiprocessing
import os
import pathlib
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from array_record.python import array_record_module
from PIL import Image
from tensorflow_datasets.proto import tf_example_pb2 as tfds_proto

from fourm_jax.data.errors import DataError

FILE_KEY = "_file"  # provenance fields every RecordSource adds to its records
INDEX_KEY = "_index"
IMAGE_SIZE_FIELD = "image_size"  # int32 [2] (height, width) of the original image, in crop_settings' units
CROP_SETTINGS_FIELD = "crop_settings"  # int32 [n_crops, 5]: (top, left, height, width, hflip)
JSON_FIELDS_KEY = "json_fields"  # metadata.json: names of Text fields that hold JSON documents
# One record per chunk (cheap random access, as TFDS writes them), zstd: decodes faster than the
# default brotli at the same size.
WRITER_OPTIONS = "group_size:1,zstd:1"
DEFAULT_VERSION = "1.0.0"


# ---------------------------------------------------------------------------------------------
# Feature vocabulary: the field kinds our datasets use.

# Arrays are stored as raw bytes (Encoding.BYTES): decoding is one np.frombuffer, where TFDS's
# default int64/float lists cost a Python-object conversion per value.

def token_grid_feature(num_tokens: int) -> tfds.features.Tensor:
    """Pre-tokenized image modality: int16 [n_crops, num_tokens], as ml-4m's save_vq_tokens writes."""
    return tfds.features.Tensor(shape=(None, num_tokens), dtype=np.int16, encoding="bytes")


def token_ids_feature(per_crop: bool = False) -> tfds.features.Tensor:
    """A pre-tokenized sequence modality (no EOS): int32 [length] token ids, or with `per_crop`
    int32 [n_crops, length], one row per crop padded with PAD (0) (aligned captions)."""
    return tfds.features.Tensor(shape=(None, None) if per_crop else (None,), dtype=np.int32,
                                encoding="bytes")


def crop_settings_feature() -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(None, 5), dtype=np.int32, encoding="bytes")


def image_size_feature() -> tfds.features.Tensor:
    return tfds.features.Tensor(shape=(2,), dtype=np.int32, encoding="bytes")


def image_feature(channels: int = 3, size: int | None = None, dtype=np.uint8) -> tfds.features.Image:
    """A PNG/JPEG image; arrays given to the writer are PNG-encoded (lossless)."""
    return tfds.features.Image(shape=(size, size, channels), dtype=dtype)


def float_map_feature(size: int | None = None) -> tfds.features.Tensor:
    """A float32 [H, W] map (depth), zlib-compressed."""
    return tfds.features.Tensor(shape=(size, size), dtype=np.float32, encoding="zlib")


def text_feature() -> tfds.features.Text:
    return tfds.features.Text()


def text_list_feature() -> tfds.features.Sequence:
    """Several strings, e.g. one caption per crop (ml-4m's aligned captions)."""
    return tfds.features.Sequence(tfds.features.Text())


def detections_feature() -> tfds.features.FeaturesDict:
    """Boxes as ml-4m's det json holds them: normalised (xmin, ymin, xmax, ymax), class, score."""
    return tfds.features.FeaturesDict({
        "boxes": tfds.features.Tensor(shape=(None, 4), dtype=np.float32, encoding="bytes"),
        "class_name": tfds.features.Sequence(tfds.features.Text()),
        "score": tfds.features.Tensor(shape=(None,), dtype=np.float32, encoding="bytes"),
    })


def encode_png(array: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8/uint16 [H, W] or [H, W, C] array."""
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------
# Writing

def shard_filename(name: str, split: str, index: int, count: int) -> str:
    """TFDS's default shard name template."""
    return f"{name}-{split}.array_record-{index:05d}-of-{count:05d}"


def count_records(path: str | os.PathLike) -> int:
    reader = array_record_module.ArrayRecordReader(os.fspath(path))
    try:
        return reader.num_records()
    finally:
        reader.close()


class DatasetWriter:
    """Writes one dataset directory; picklable, so shards can be written in worker processes.

    `json_fields` names Text fields holding JSON (metadata, colour palettes): the writer serializes
    dicts/lists given for them and readers parse them back. `metadata` is free-form JSON-able info
    stored in metadata.json (class names, generator settings, ...).
    """

    def __init__(self, dataset_dir: str | os.PathLike, name: str,
                 features: tfds.features.FeaturesDict | Mapping[str, Any], *,
                 description: str = "", json_fields: Sequence[str] = (),
                 metadata: Mapping[str, Any] | None = None, version: str = DEFAULT_VERSION):
        self.dataset_dir = pathlib.Path(dataset_dir)
        self.name = name
        self.features = (features if isinstance(features, tfds.features.FeaturesDict)
                         else tfds.features.FeaturesDict(dict(features)))
        self.description = description
        self.json_fields = tuple(json_fields)
        self.metadata = dict(metadata or {})
        self.version = version
        for field in self.json_fields:
            if not isinstance(self.features[field], tfds.features.Text):
                raise ValueError(f"json field {field!r} must be a Text feature, "
                                 f"got {type(self.features[field]).__name__}")
        self._images = [k for k, f in self.features.items() if isinstance(f, tfds.features.Image)]

    def shard_path(self, split: str, index: int, count: int) -> pathlib.Path:
        return self.dataset_dir / shard_filename(self.name, split, index, count)

    def serialize(self, example: Mapping[str, Any]) -> bytes:
        example = dict(example)
        missing = sorted(set(self.features) - set(example))
        extra = sorted(set(example) - set(self.features))
        if missing or extra:
            raise DataError(f"example fields do not match the features: missing {missing}, "
                            f"unknown {extra}")
        for field in self._images:
            if isinstance(example[field], np.ndarray):
                example[field] = encode_png(example[field])
        for field in self.json_fields:
            if not isinstance(example[field], str):
                example[field] = json.dumps(example[field])
        try:
            return self.features.serialize_example(example)
        except (ValueError, TypeError) as error:  # TFDS names the feature in its message
            raise DataError(f"cannot encode the example: {error}".replace("\n", " ")) from None

    def write_shard(self, split: str, index: int, count: int, examples: Iterable[Mapping]) -> int:
        """Writes shard `index` of `count` atomically; returns its number of records."""
        path = self.shard_path(split, index, count)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        writer = array_record_module.ArrayRecordWriter(os.fspath(temporary), WRITER_OPTIONS)
        written = 0
        try:
            for example in examples:
                try:
                    writer.write(self.serialize(example))
                except DataError as error:
                    raise error.located(file=str(path), index=written) from None
                written += 1
            writer.close()
            os.replace(temporary, path)
        except BaseException:
            writer.close()
            temporary.unlink(missing_ok=True)
            raise
        return written

    def finished_shard_length(self, split: str, index: int, count: int) -> int | None:
        """Records in a shard already on disk, or None if it is absent or unreadable.

        Shards appear only by rename after a complete write, so one that opens is complete."""
        path = self.shard_path(split, index, count)
        if not path.exists():
            return None
        try:
            return count_records(path)
        except Exception:  # array_record raises bare RuntimeErrors
            return None

    def finalize(self, num_shards: Mapping[str, int]) -> pathlib.Path:
        """Writes the TFDS metadata for the given splits; dataset_info.json is renamed in last."""
        split_infos = []
        for split, count in num_shards.items():
            lengths = []
            for index in range(count):
                length = self.finished_shard_length(split, index, count)
                if length is None:
                    raise FileNotFoundError(f"shard {self.shard_path(split, index, count)} is missing "
                                            "or unreadable; rerun the build to resume it")
                lengths.append(length)
            num_bytes = sum(self.shard_path(split, i, count).stat().st_size for i in range(count))
            split_infos.append(tfds.core.SplitInfo(
                name=split, shard_lengths=lengths, num_bytes=num_bytes,
                filename_template=tfds.core.ShardedFileTemplate(
                    data_dir=self.dataset_dir, dataset_name=self.name, split=split,
                    filetype_suffix="array_record")))
        staging = self.dataset_dir / f".metadata.tmp-{os.getpid()}"
        staging.mkdir(parents=True, exist_ok=True)
        identity = tfds.core.dataset_info.DatasetIdentity(
            name=self.name, version=tfds.core.Version(self.version),
            data_dir=os.fspath(self.dataset_dir), module_name="")
        info = tfds.core.DatasetInfo(
            builder=identity, features=self.features, description=self.description,
            metadata=tfds.core.MetadataDict(
                **self.metadata, **{JSON_FIELDS_KEY: list(self.json_fields)}))
        info.set_file_format(tfds.core.FileFormat.ARRAY_RECORD)
        info.set_splits(tfds.core.SplitDict(split_infos))
        info.write_to_directory(staging)
        (self.dataset_dir / "dataset_info.json").unlink(missing_ok=True)
        files = sorted(staging.iterdir(), key=lambda p: p.name == "dataset_info.json")
        for file in files:
            os.replace(file, self.dataset_dir / file.name)
        staging.rmdir()
        return self.dataset_dir


def _write_one_shard(writer: DatasetWriter, split: str, count: int,
                     make_shard: Callable[[int], Iterable[Mapping]], index: int) -> int:
    return writer.write_shard(split, index, count, make_shard(index))


def write_split(writer: DatasetWriter, split: str, num_shards: int,
                make_shard: Callable[[int], Iterable[Mapping]], *, total: int | None = None,
                num_workers: int = 0, progress: bool = True) -> int:
    """Writes every missing shard of a split; returns the split's number of records.

    `make_shard(i)` yields the examples of shard i; it must be deterministic, so that a resumed build
    writes what an uninterrupted one would. With `num_workers > 1` shards are written in that many
    processes (`make_shard` must then be picklable: a module-level function or functools.partial).
    """
    done = {i: writer.finished_shard_length(split, i, num_shards) for i in range(num_shards)}
    todo = [i for i, length in done.items() if length is None]
    records = sum(length for length in done.values() if length is not None)
    bar = tqdm.tqdm(total=total, initial=records, unit="ex", desc=f"{writer.name}/{split}",
                    disable=not progress, dynamic_ncols=True)
    task = functools.partial(_write_one_shard, writer, split, num_shards, make_shard)
    with bar:
        if num_workers > 1 and len(todo) > 1:
            context = multiprocessing.get_context("spawn")
            with context.Pool(min(num_workers, len(todo))) as pool:
                for length in pool.imap_unordered(task, todo):
                    records += length
                    bar.update(length)
        else:
            for index in todo:
                length = task(index)
                records += length
                bar.update(length)
    return records


# ---------------------------------------------------------------------------------------------
# Reading

class _Decoder:
    """Decodes serialized tf.train.Examples of a FeaturesDict into numpy, as TFDS's
    `deserialize_example_np` does, with one precompiled step per feature.

    TFDS's generic parser spends ~40 us of Python per feature; this costs a few. Features it has no
    fast step for (ClassLabel, BBox, nested sequences, ...) make it defer to TFDS for the record.
    """

    def __init__(self, features: tfds.features.FeaturesDict):
        self.features = features
        self.steps = self._compile(features, prefix="")

    def _compile(self, features, prefix: str):
        steps = []
        for name, feature in features.items():
            key = prefix + name
            if isinstance(feature, tfds.features.FeaturesDict):
                nested = self._compile(feature, key + "/")
                if nested is None:
                    return None
                steps.append((name, "dict", nested))
            elif type(feature) is tfds.features.Text:
                steps.append((name, "text", key))
            elif (type(feature) is tfds.features.Sequence and feature._length is None
                  and type(feature.feature) is tfds.features.Text):
                steps.append((name, "text_list", key))
            elif type(feature) is tfds.features.Image:
                steps.append((name, "image", (key, feature)))
            elif type(feature) is tfds.features.Tensor:
                shape = tuple(-1 if d is None else d for d in feature.shape)
                encoding = feature._encoding.value
                if encoding not in ("none", "bytes", "zlib") or (
                        shape.count(-1) > 1 and encoding == "none"):
                    return None
                if shape.count(-1) > 1:  # TFDS stores the shape beside the bytes
                    steps.append((name, "tensor_shaped_" + encoding,
                                  (key, np.dtype(feature.np_dtype), None)))
                else:
                    steps.append((name, "tensor_" + encoding,
                                  (key, np.dtype(feature.np_dtype), shape)))
            else:
                return None
        return steps

    def __call__(self, serialized: bytes) -> dict[str, Any]:
        if self.steps is None:
            return self.features.deserialize_example_np(serialized)
        feature = tfds_proto.Example.FromString(serialized).features.feature
        return self._run(self.steps, feature)

    def _run(self, steps, feature) -> dict[str, Any]:
        out = {}
        for name, kind, arg in steps:
            if kind == "dict":
                out[name] = self._run(arg, feature)
            elif kind == "text":
                out[name] = feature[arg].bytes_list.value[0]
            elif kind == "text_list":
                out[name] = list(feature[arg].bytes_list.value)
            elif kind == "image":
                key, image = arg
                out[name] = image.decode_example_np(feature[key].bytes_list.value[0])
            else:
                key, dtype, shape = arg
                if shape is None:
                    shape = tuple(feature[key + "/shape"].int64_list.value)
                    key = key + "/value"
                if kind == "tensor_none":
                    values = feature[key]
                    values = values.int64_list.value if values.HasField("int64_list") else \
                        values.float_list.value
                    array = np.array(values, dtype=dtype)
                else:
                    data = feature[key].bytes_list.value[0]
                    if kind.endswith("zlib"):
                        data = zlib.decompress(data)
                    array = np.frombuffer(data, dtype=dtype)
                out[name] = array.reshape(shape)
        return out


class RecordSource:
    """Random-access records of one split of a TFDS ArrayRecord dataset, with provenance.

    Built by `open_dataset`. Records are dicts of numpy arrays and Python values (Text fields as
    `str`, JSON fields parsed) plus `_file` (shard path) and `_index` (record index in that shard).
    """

    def __init__(self, data_source, split: str):
        self._source = data_source
        self.info = data_source.dataset_info
        self.split = split
        self.features = self.info.features
        self._decode = _Decoder(self.features)
        instructions = tfds.core.data_sources.base.file_instructions(self.info, split)
        self._files = [str(fi.filename) for fi in instructions]
        self._skips = [fi.skip for fi in instructions]
        self._shard_lengths = [fi.examples_in_shard for fi in instructions]
        self._starts = list(np.cumsum([0] + [fi.take for fi in instructions])[:-1])
        self._length = int(sum(fi.take for fi in instructions))
        metadata = self.info.metadata or {}
        self.json_fields = tuple(metadata.get(JSON_FIELDS_KEY, ()))
        self._text_fields = [k for k, f in self.features.items() if isinstance(f, tfds.features.Text)]
        self._text_list_fields = [k for k, f in self.features.items()
                                  if isinstance(f, tfds.features.Sequence)
                                  and isinstance(f.feature, tfds.features.Text)]
        self._dict_fields = [k for k, f in self.features.items()
                             if isinstance(f, tfds.features.FeaturesDict)]

    @property
    def files(self) -> list[str]:
        return list(self._files)

    def __len__(self) -> int:
        return self._length

    def locate(self, index: int) -> tuple[str, int]:
        """(shard file, record index inside it) of a global record index."""
        shard = bisect.bisect_right(self._starts, index) - 1
        return self._files[shard], self._skips[shard] + index - self._starts[shard]

    def verify(self) -> None:
        """Checks every shard opens and holds the record count dataset_info.json promises."""
        for file, want in zip(self._files, self._shard_lengths, strict=True):
            if not os.path.exists(file):
                raise DataError("shard file is missing", file=file)
            try:
                length = count_records(file)
            except Exception as error:  # array_record raises bare RuntimeErrors
                raise DataError(f"cannot open shard, truncated or corrupt ({error})",
                                file=file) from None
            if length != want:
                raise DataError(f"shard holds {length} readable records but dataset_info.json "
                                f"says {want}: truncated or corrupt shard", file=file)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < self._length:
            raise IndexError(f"record {index} is out of range for {self._length} records")
        file, local = self.locate(index)
        try:
            raw = self._source.data_source[index]
        except Exception as error:
            raise DataError(f"cannot read record ({error})", file=file, index=local) from None
        try:
            record = self._decode(raw)
        except Exception as error:
            raise DataError(f"cannot decode record ({error})", file=file, index=local) from None
        return self._to_python(record, file, local)

    def _to_python(self, record: dict, file: str, local: int) -> dict[str, Any]:
        for field in self._text_fields:
            record[field] = record[field].decode("utf-8")
        for field in self._text_list_fields:
            record[field] = [value.decode("utf-8") for value in record[field]]
        for field in self._dict_fields:
            value = record[field]
            for key, sub in value.items():
                if isinstance(sub, list):
                    value[key] = [s.decode("utf-8") if isinstance(s, bytes) else s for s in sub]
        for field in self.json_fields:
            try:
                record[field] = json.loads(record[field])
            except json.JSONDecodeError as error:
                raise DataError(f"invalid JSON ({error})", file=file, index=local,
                                field=field) from None
        record[FILE_KEY] = file
        record[INDEX_KEY] = local
        return record

    def __repr__(self) -> str:
        return f"RecordSource({self.info.name}, split={self.split!r}, {self._length} records)"


def open_dataset(name_or_dir: str | os.PathLike, split: str = "train", *,
                 data_dir: str | os.PathLike | None = None, verify: bool = True) -> RecordSource:
    """Opens one split of a TFDS dataset stored as ArrayRecord, through `tfds.data_source`.

    `name_or_dir` is either a dataset directory (the one holding dataset_info.json) or a TFDS name
    (`scenes/64px`, `mnist`, ...) resolved under `data_dir`. With `verify`, every shard is opened
    and its record count checked, so a truncated shard fails here, naming the file.
    """
    path = pathlib.Path(name_or_dir)
    if path.is_dir() and not (path / "dataset_info.json").exists() and any(
            path.glob("*.array_record-*")):
        raise DataError("no dataset_info.json: an unfinished build? rerun it to resume",
                        file=str(path))
    try:
        if (path / "dataset_info.json").exists():
            source = tfds.builder_from_directory(path).as_data_source(split=split)
        else:
            source = tfds.data_source(str(name_or_dir), split=split, data_dir=data_dir,
                                      download=False)
    except Exception as error:
        raise DataError(f"cannot open split {split!r} as a TFDS ArrayRecord dataset ({error})",
                        file=str(name_or_dir)) from None
    if source.dataset_info.file_format is not tfds.core.FileFormat.ARRAY_RECORD:
        raise DataError(f"dataset is stored as {source.dataset_info.file_format}, not ArrayRecord; "
                        "rebuild it with file_format='array_record'", file=str(name_or_dir))
    records = RecordSource(source, split)
    if verify:
        records.verify()
    return records

