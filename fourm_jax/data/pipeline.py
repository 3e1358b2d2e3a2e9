"""The Grain input pipeline: records on disk -> masked, batched global jax.Arrays on the mesh.

    per dataset:  source[process::processes] -> shuffle -> repeat -> random_map(ExampleTransform)
    then:         mix(weights) -> batch -> random_map(BatchMasking) -> worker processes
                  -> global jax.Array

`ExampleTransform` is one Grain random map per example: pick one crop index for all modalities,
prepare each modality (token grid row, RGB crop) and tokenize the sequences (fourm_jax.text).
`BatchMasking` then applies 4M's masking (fourm_jax.masking) to a whole batch at once, each
example with its dataset's mixture, giving per modality `tensor`, `input_mask`, `target_mask`,
`decoder_attention_mask` in ml-4m's layout (masking a batch in one call costs a quarter of masking
its examples one by one and stacking them). Everything random comes from Generators Grain derives
from (seed, position), so the stream is a pure function of the config and the iterator state;
`build_dataset(...)` returns a Grain IterDataset whose iterator saves and restores that state with
Orbax (`grain.checkpoint.CheckpointSave(iterator)` / `CheckpointRestore(iterator)`).
"""

from __future__ import annotations

import dataclasses
import pathlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np
from absl import flags

from fourm_jax import configs, masking
from fourm_jax import modalities as modality_registry
from fourm_jax import sharding as mesh_sharding
from fourm_jax.data import records, sources, transforms
from fourm_jax.data.errors import DataError, SkipCounter
from fourm_jax.modalities import Kind, Modality
from fourm_jax.text import formats as text_formats
from fourm_jax.text import tokenizer as text_tokenizer

SOURCE_FORMATS = ("tfds", "image_folder", "ml4m_shards")
CROP_MODES = ("random", "center")


@dataclasses.dataclass(frozen=True)
class DatasetConfig:
    """One dataset of the mixture.

    path: a dataset directory or TFDS name (format 'tfds'), or the root of an image-folder or ml-4m
    shard layout. masking: the dataset's masking, a mixture config as in configs/mixtures/*.py
    (the ConfigDict, or its `path.py[:arg]`), or any object with masking.Masker's contract
    (`masker.mask_batch(examples, rng)`, `masker.mixture.modalities`).
    fields: record field per modality where it is not the modality's `path` (ml-4m's folder name;
    e.g. {'caption': 'text'} for a text corpus). crop: 'random' (training) or 'center' (crop 0,
    ml-4m's validation). aligned_captions: a list of as many captions as crops is indexed by the
    crop (ml-4m's aligned captions); other lists give a random caption. det_threshold: boxes below
    this score are dropped (ml-4m: 0.6).
    """

    name: str
    path: str
    masking: Any
    format: str = "tfds"
    split: str = "train"
    data_dir: str | None = None
    weight: float = 1.0
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    crop: str = "random"
    aligned_captions: bool = True
    det_threshold: float = 0.6

    def __post_init__(self):
        if isinstance(self.masking, str):
            object.__setattr__(self, "masking", configs.load(self.masking))
        if self.format not in SOURCE_FORMATS:
            raise ValueError(f"dataset {self.name!r}: format {self.format!r} is not one of "
                             f"{SOURCE_FORMATS}")
        if self.crop not in CROP_MODES:
            raise ValueError(f"dataset {self.name!r}: crop {self.crop!r} is not one of {CROP_MODES}")
        if not self.weight > 0:
            raise ValueError(f"dataset {self.name!r}: weight must be > 0, got {self.weight}")


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    """The whole input pipeline.

    global_batch_size: examples per step over all processes. modalities: the batch's modalities
    (default: the union of the datasets' masking modalities; a dataset lacking one yields it fully
    masked). text_tokenizer: the text vocabulary (a WordPiece .json / SentencePiece .model path, or
    a fourm_jax.text TextTokenizer) that sequence modalities are tokenized with. num_workers: Grain
    worker processes (0: in the calling process). skip_bad_records: skip records that fail
    validation, counting each in a logged warning, instead of raising.
    """

    datasets: tuple[DatasetConfig, ...]
    global_batch_size: int
    modalities: tuple[str, ...] = ()
    text_tokenizer: Any = None
    seed: int = 0
    shuffle: bool = True
    num_workers: int = 0
    worker_buffer_size: int = 2
    host_prefetch: int = 2
    device_prefetch: int = 2
    skip_bad_records: bool = False

    def __post_init__(self):
        object.__setattr__(self, "datasets", tuple(self.datasets))
        object.__setattr__(self, "modalities", tuple(self.modalities))
        if not self.datasets:
            raise ValueError("pipeline config names no dataset")
        names = [d.name for d in self.datasets]
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        if self.global_batch_size <= 0:
            raise ValueError(f"global_batch_size must be > 0, got {self.global_batch_size}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers}")

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> PipelineConfig:
        """From a ConfigDict with the fields above and `datasets` = {name: {path, masking, ...}}."""
        values = config.to_dict() if isinstance(config, ml_collections.ConfigDict) else dict(config)
        datasets = values.pop("datasets")
        known = {f.name for f in dataclasses.fields(cls)} - {"datasets"}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown data config field(s) {unknown}; known: {sorted(known)}")
        dataset_fields = {f.name for f in dataclasses.fields(DatasetConfig)} - {"name"}
        built = []
        for name, entry in datasets.items():
            entry = dict(entry)
            unknown = sorted(set(entry) - dataset_fields)
            if unknown:
                raise ValueError(f"data.datasets.{name}: unknown field(s) {unknown}; known: "
                                 f"{sorted(dataset_fields)}")
            if isinstance(entry.get("masking"), Mapping):
                entry["masking"] = ml_collections.ConfigDict(entry["masking"])
            built.append(DatasetConfig(name=name, **entry))
        if "modalities" in values:
            values["modalities"] = tuple(values["modalities"])
        return cls(datasets=tuple(built), **values)


def _is_masker(masking_config) -> bool:
    return hasattr(masking_config, "mask_batch")


def _masker_for(dataset: DatasetConfig, output_modalities: Sequence[str]):
    if _is_masker(dataset.masking):
        return dataset.masking
    # Token ids are checked against the vocabularies while examples are prepared, where the
    # error can name the record.
    return masking.Masker.from_config(dataset.masking, output_modalities=tuple(output_modalities),
                                      check_ids=False)


def _mixture_modalities(dataset: DatasetConfig) -> tuple[str, ...]:
    if _is_masker(dataset.masking):
        return tuple(dataset.masking.mixture.modalities)
    return tuple(sorted(dataset.masking["alphas"].keys()))


_MODALITY_IN_MESSAGE = re.compile(r"modality '([^']+)'")


class ExampleTransform(grain.transforms.RandomMap):
    """Record -> the masker's input for one dataset; bad records raise or are skipped (None).

    The prepared example also carries its dataset's position (`_dataset`) and provenance, for
    BatchMasking.
    """

    def __init__(self, dataset: DatasetConfig, position: int, mixture_modalities: Sequence[str],
                 tokenizer, specs: Mapping[str, Modality], skip_bad_records: bool):
        self.dataset = dataset
        self.position = position
        self.skip_bad_records = skip_bad_records
        self.skipped = SkipCounter(f"dataset {dataset.name!r}")
        self.plan = [(name, specs[name], dataset.fields.get(name, specs[name].path))
                     for name in mixture_modalities]
        self.token_fields = [field for _, spec, field in self.plan if spec.kind is Kind.IMAGE_TOKENS]
        self.image_field = next((field for _, spec, field in self.plan
                                 if spec.kind is Kind.IMAGE_PIXELS), None)
        sequences = [name for name, spec, _ in self.plan if spec.kind is Kind.SEQUENCE]
        self.formats = {}
        if sequences:
            if tokenizer is None:
                raise ValueError(f"dataset {dataset.name!r}: sequence modalities {sequences} need "
                                 "a text tokenizer (PipelineConfig.text_tokenizer)")
            self.formats = text_formats.formats_for(tokenizer)
            self.formats["det"] = text_formats.Detection(tokenizer,
                                                         score_threshold=dataset.det_threshold)
            unsupported = [n for n in sequences if _format_name(n) not in _SEQUENCE_PREPARERS]
            if unsupported:
                raise ValueError(f"dataset {dataset.name!r}: the pipeline cannot prepare "
                                 f"{unsupported} yet (supported: {sorted(_SEQUENCE_PREPARERS)})")

    def random_map(self, record: dict[str, Any], rng: np.random.Generator):
        file, index = record.get(records.FILE_KEY), record.get(records.INDEX_KEY)
        try:
            example = self.prepare(record, rng)
        except DataError as error:
            error = error.located(file=file, index=index)
            if not self.skip_bad_records:
                raise error from None
            self.skipped.skip(error)
            return None
        example[_DATASET_KEY] = self.position
        example[records.FILE_KEY], example[records.INDEX_KEY] = file, index
        return example

    def prepare(self, record: Mapping[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """The masker's input: every mixture modality of the record, at one shared crop."""
        settings = transforms.crop_settings(record, self.token_fields)
        n_crops = transforms.crop_count(record, settings, self.token_fields)
        crop = int(rng.integers(n_crops)) if self.dataset.crop == "random" and n_crops > 1 else 0
        size = transforms.original_size(record, self.image_field)
        if settings is not None:
            crop_row = settings[crop]
        else:  # no crop settings: the centre square, as ml-4m's centre-crop augmenter
            crop_row = None if size is None else transforms.full_image_crop(*size)
        context = _Crop(crop, crop_row, n_crops, size)
        example = {}
        for name, spec, field in self.plan:
            if field not in record:
                present = sorted(k for k in record if not k.startswith("_"))
                raise DataError(f"missing (modality {name!r} needs it; the record has {present})",
                                field=field)
            value = record[field]
            if spec.kind is Kind.IMAGE_TOKENS:
                example[name] = transforms.token_row(value, crop, spec.max_tokens, spec.vocab_size,
                                                     field)
            elif spec.kind is Kind.IMAGE_PIXELS:
                example[name] = transforms.rgb_pixels(value, crop_row, spec.input_size, field)
            elif spec.kind is Kind.SEQUENCE:
                example[name] = self._sequence(name, field, value, context, rng)
            else:
                example[name] = value
        return example

    def _sequence(self, name: str, field: str, value: Any, crop: _Crop, rng: np.random.Generator):
        if isinstance(value, np.ndarray) and value.dtype.kind in "iu":
            ids = self._token_ids(value, crop, rng, field)
            transforms.check_vocabulary(ids, modality_registry.get(name).vocab_size, field)
            return ids
        kind = _format_name(name)
        try:
            return _SEQUENCE_PREPARERS[kind](self, self.formats[kind], value, crop, rng)
        except DataError as error:
            raise error.located(field=field) from None
        except (ValueError, KeyError, TypeError, IndexError) as error:
            raise DataError(str(error), field=field) from None


    def _token_ids(self, value: np.ndarray, crop: _Crop, rng: np.random.Generator, field: str):
        """Pre-tokenized ids: int [L], or int [rows, L] PAD-padded, one row per crop when there
        are as many rows as crops (aligned), else a random row."""
        if value.ndim == 1:
            return value
        if value.ndim != 2 or not len(value):
            raise DataError(f"expected token ids [L] or [rows, L], got shape {value.shape}",
                            field=field)
        aligned = self.dataset.aligned_captions and len(value) == crop.count
        row = value[crop.index if aligned else int(rng.integers(len(value)))]
        return row[:len(row) - int(np.argmax(row[::-1] != 0)) if row.any() else 0]


@dataclasses.dataclass(frozen=True)
class _Crop:
    """The crop an example is seen at: its index, settings row (top, left, h, w, flip) or None for
    the whole image, the number of crops, and the original (height, width) when known."""

    index: int
    row: np.ndarray | None
    count: int
    image_size: tuple[int, int] | None


def _format_name(modality: str) -> str:
    return modality.split("@")[0]


def _caption(transform, fmt, value, crop, rng):
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    aligned = (transform.dataset.aligned_captions and isinstance(value, list)
               and len(value) == crop.count)
    return fmt.encode(fmt.select(value, crop.index if aligned else None, rng, aligned))


def _detections(transform, fmt, value, crop, rng):
    if isinstance(value, Mapping) and "boxes" in value:  # our arrays -> ml-4m's instances
        boxes, names = value["boxes"], value["class_name"]
        scores = value.get("score", np.ones(len(names)))
        if not len(boxes) == len(names) == len(scores):
            raise DataError(f"{len(boxes)} boxes, {len(names)} class names and {len(scores)} scores")
        value = [{"boxes": box, "class_name": name, "score": score}
                 for box, name, score in zip(np.asarray(boxes).tolist(), names,
                                             np.asarray(scores).tolist(), strict=True)]
    return fmt.encode(fmt.prepare(value, crop.row, crop.image_size, rng))


def _metadata(transform, fmt, value, crop, rng):
    return fmt.encode(value, rng)


def _color_palette(transform, fmt, value, crop, rng):
    return fmt.encode(fmt.select(value, rng))


def _human_poses(transform, fmt, value, crop, rng):
    return fmt.encode(fmt.prepare(value, crop.row, crop.image_size), rng)


_SEQUENCE_PREPARERS = {"caption": _caption, "det": _detections, "metadata": _metadata,
                       "color_palette": _color_palette, "human_poses": _human_poses}


_DATASET_KEY = "_dataset"


class BatchMasking(grain.transforms.RandomMap):
    """A list of prepared examples -> one masked batch ({modality: {tensor, input_mask,
    target_mask, decoder_attention_mask}}, leading batch axis), each example masked with its
    dataset's masker."""

    def __init__(self, maskers: Sequence[Any]):
        self.maskers = list(maskers)

    def random_map(self, examples: list[dict[str, Any]], rng: np.random.Generator):
        positions = [example[_DATASET_KEY] for example in examples]
        if len(set(positions)) == 1:
            return self._mask(positions[0], examples, rng)
        rows = {}
        for row, position in enumerate(positions):
            rows.setdefault(position, []).append(row)
        parts = [(np.array(indices), self._mask(position, [examples[i] for i in indices], rng))
                 for position, indices in sorted(rows.items())]
        return jax.tree.map(lambda *arrays: _scatter(len(examples), parts, arrays),
                            *[part for _, part in parts])

    def _mask(self, position: int, examples: list[dict[str, Any]], rng: np.random.Generator):
        try:
            return self.maskers[position].mask_batch(examples, rng)
        except (ValueError, KeyError, TypeError):  # locate the example it came from
            for example in examples:
                try:
                    self.maskers[position].mask_batch([example], np.random.default_rng(0))
                except (ValueError, KeyError, TypeError) as single:
                    message = single.args[0] if single.args else str(single)
                    match = _MODALITY_IN_MESSAGE.search(str(message))
                    raise DataError(str(message), file=example.get(records.FILE_KEY),
                                    index=example.get(records.INDEX_KEY),
                                    field=match.group(1) if match else None) from None
            raise


def _scatter(size: int, parts, arrays) -> np.ndarray:
    """Rows of per-dataset arrays put back in batch order."""
    out = np.empty((size, *arrays[0].shape[1:]), arrays[0].dtype)
    for (rows, _), array in zip(parts, arrays, strict=True):
        out[rows] = array
    return out


def open_source(dataset: DatasetConfig, fields: Sequence[str]):
    """The random-access source of one dataset (fields: what image folders and shards must read)."""
    if dataset.format == "tfds":
        return records.open_dataset(dataset.path, dataset.split, data_dir=dataset.data_dir)
    if dataset.format == "image_folder":
        return sources.ImageFolderSource(dataset.path, list(fields))
    return sources.Ml4mShardSource(dataset.path, list(fields))


def _fields_to_read(dataset: DatasetConfig, needed: list[str]) -> list[str]:
    """Needed fields, plus crop settings and image size where a folder layout has them."""
    if dataset.format == "tfds":
        return needed
    extra = [field for field in (records.CROP_SETTINGS_FIELD, records.IMAGE_SIZE_FIELD)
             if field not in needed and (pathlib.Path(dataset.path) / field).is_dir()]
    return needed + extra


def output_modalities(config: PipelineConfig) -> tuple[str, ...]:
    if config.modalities:
        return config.modalities
    return tuple(sorted({m for d in config.datasets for m in _mixture_modalities(d)}))


def _seed(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1)[0])


def host_dataset(config: PipelineConfig, *, process_index: int | None = None,
                 process_count: int | None = None) -> grain.IterDataset:
    """This process's batches as numpy (per-process batch = global / process count)."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if config.global_batch_size % process_count:
        raise ValueError(f"global_batch_size {config.global_batch_size} is not divisible by the "
                         f"{process_count} processes")
    outputs = output_modalities(config)
    specs = {name: modality_registry.get(name) for name in outputs}
    tokenizer = config.text_tokenizer
    if isinstance(tokenizer, (str, pathlib.Path)):
        tokenizer = text_tokenizer.load_tokenizer(tokenizer)
    datasets, maskers = [], []
    for position, dataset in enumerate(config.datasets):
        masker = _masker_for(dataset, outputs)
        missing = [m for m in masker.mixture.modalities if m not in specs]
        if missing:
            raise ValueError(f"dataset {dataset.name!r} masks {missing}, which the pipeline's "
                             f"modalities {outputs} lack")
        maskers.append(masker)
        transform = ExampleTransform(dataset, position, masker.mixture.modalities, tokenizer, specs,
                                     config.skip_bad_records)
        needed = [field for _, _, field in transform.plan]
        source = open_source(dataset, _fields_to_read(dataset, needed))
        if len(source) < process_count:
            raise ValueError(f"dataset {dataset.name!r} has {len(source)} records, fewer than the "
                             f"{process_count} processes")
        ds = _SourceDataset(source)[process_index::process_count]
        if config.shuffle:
            ds = ds.shuffle(seed=_seed(config.seed, position, process_index, 0))
        ds = ds.repeat().random_map(transform, seed=_seed(config.seed, position, process_index, 1))
        datasets.append(ds)
    mixed = datasets[0] if len(datasets) == 1 else grain.MapDataset.mix(
        datasets, [d.weight for d in config.datasets])
    # Reading threads would only contend for the GIL with the transforms: read in the worker.
    examples = mixed.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    batched = examples.batch(config.global_batch_size // process_count, drop_remainder=True,
                             batch_fn=list).random_map(
        BatchMasking(maskers), seed=_seed(config.seed, process_index, 2))
    if config.num_workers > 0:
        if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags
            flags.FLAGS.mark_as_parsed()
        batched = batched.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=config.num_workers, per_worker_buffer_size=config.worker_buffer_size))
    return batched


class _SourceDataset(grain.MapDataset):
    """A random-access source as the root of the pipeline. (Grain's MapDataset.source would also
    estimate every record's size for its metrics, a tree walk that costs more than decoding.)"""

    def __init__(self, source):
        super().__init__()
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.slice(index)
        return self._source[index % len(self._source)]


class _ToGlobalArrays(grain.transforms.Map):
    """Per-process numpy batch -> global jax.Arrays sharded over the batch axis."""

    def __init__(self, sharding: jax.sharding.Sharding):
        self.sharding = sharding

    def map(self, batch):
        return jax.tree.map(
            lambda x: jax.make_array_from_process_local_data(self.sharding, np.asarray(x)), batch)


def build_dataset(config: PipelineConfig,
                  sharding: jax.sharding.Sharding | jax.sharding.Mesh, *,
                  process_index: int | None = None,
                  process_count: int | None = None) -> grain.IterDataset:
    """The training input: an IterDataset of {modality: {tensor, input_mask, target_mask,
    decoder_attention_mask}} global jax.Arrays, prefetched onto the devices, the leading (batch)
    axis sharded by `sharding`: `fourm_jax.sharding.batch_sharding(mesh, rules)`, or a
    Mesh (then the default rules: the batch over 'data' and 'fsdp').

    `iterator = iter(build_dataset(...))`; save its state with Orbax as
    `grain.checkpoint.CheckpointSave(iterator)` and restore into a fresh iterator of the same
    config with `grain.checkpoint.CheckpointRestore(iterator)` (or get_state / set_state).
    """
    host = host_dataset(config, process_index=process_index, process_count=process_count)
    host = grain.experimental.ThreadPrefetchIterDataset(host, prefetch_buffer_size=config.host_prefetch)
    if isinstance(sharding, jax.sharding.Mesh):
        sharding = mesh_sharding.batch_sharding(sharding, mesh_sharding.DEFAULT_RULES)
    device = host.map(_ToGlobalArrays(sharding))
    return grain.experimental.ThreadPrefetchIterDataset(device,
                                                        prefetch_buffer_size=config.device_prefetch)
