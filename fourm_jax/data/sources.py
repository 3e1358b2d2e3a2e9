"""Readers for data in ml-4m's layouts: image folders and pre-tokenized webdataset tar shards.

Both give the same records as our ArrayRecord datasets (`records.RecordSource`): a dict of fields
in canonical form plus provenance (`_file`, `_index`), so the pipeline and the importer
(tools/import_ml4m_shards.py) handle every source alike. Canonical forms:

    tok_*            int [n_crops, N] token ids (ml-4m stores int16)
    crop_settings    int [n_crops, 5]: top, left, height, width, hflip
    images           uint8 [H, W] or [H, W, C] (16-bit PNGs: uint16)
    caption          str, or list of str (one per crop when aligned)
    det              {'boxes': float32 [n, 4] normalised xmin, ymin, xmax, ymax,
                      'class_name': list of str, 'score': float32 [n]}
    other .json      the parsed document (metadata, color_palette, human_poses)
    other .txt       str

Field names are the folder names (ml-4m's `path` of each modality: `rgb`, `tok_rgb@224`, ...).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import json
import os
import pathlib
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from fourm_jax.data.errors import DataError
from fourm_jax.data.records import FILE_KEY, INDEX_KEY

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "ppm", "bmp", "pgm", "tif", "tiff", "webp", "jpx")
FILE_EXTENSIONS = IMAGE_EXTENSIONS + ("npy", "npz", "json", "txt", "json.gz")


def split_extension(filename: str) -> tuple[str, str]:
    """('dir/key', 'json.gz') for 'dir/key.json.gz'; the key ends at the basename's first dot."""
    directory, base = os.path.split(filename)
    stem, dot, extension = base.partition(".")
    if not dot:
        return filename, ""
    return os.path.join(directory, stem), extension


def decode_image(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        if image.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        array = np.asarray(image)
    if array.dtype == np.int32:  # PIL's 'I' mode, what 16-bit PNGs open as
        array = array.astype(np.uint16)
    return array


def canonical_detections(document: Any) -> dict[str, Any]:
    """ml-4m's det json `{'instances': [{'boxes', 'class_name', 'score'}, ...]}` as arrays."""
    if not isinstance(document, Mapping) or not isinstance(document.get("instances"), list):
        raise DataError("det json must be an object with an 'instances' list")
    boxes, names, scores = [], [], []
    for instance in document["instances"]:
        try:
            boxes.append([float(v) for v in instance["boxes"]])
            names.append(str(instance["class_name"]))
            scores.append(float(instance["score"]))
        except (KeyError, TypeError, ValueError) as error:
            raise DataError(f"det instance {instance!r} lacks boxes/class_name/score ({error})") \
                from None
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return {"boxes": boxes, "class_name": names, "score": np.asarray(scores, np.float32)}


def canonical_caption(value: Any) -> str | list[str]:
    """A caption as ml-4m accepts it (str, list of str, dicts with 'caption') as str or list."""
    if isinstance(value, Mapping):
        value = value.get("caption")
    if isinstance(value, list):
        value = [item.get("caption") if isinstance(item, Mapping) else item for item in value]
        if not all(isinstance(item, str) for item in value):
            raise DataError(f"caption list must hold strings or {{'caption': str}}, got {value!r}")
        return value
    if not isinstance(value, str):
        raise DataError(f"caption must be a string or a list of strings, got {type(value).__name__}")
    return value


def decode_member(field: str, extension: str, data: bytes) -> Any:
    """Decodes one file of a sample by extension, into the field's canonical form."""
    try:
        if extension in IMAGE_EXTENSIONS:
            return decode_image(data)
        if extension == "npy":
            return np.load(io.BytesIO(data), allow_pickle=False)
        if extension == "npz":
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                return dict(archive)
        if extension in ("json", "json.gz"):
            value = json.loads(gzip.decompress(data) if extension == "json.gz" else data)
        elif extension == "txt":
            value = data.decode("utf-8")
        else:
            raise DataError(f"unsupported file extension {extension!r}; expected one of "
                            f"{', '.join(FILE_EXTENSIONS)}")
    except DataError:
        raise
    except ValueError as error:
        if "Object arrays" in str(error):
            raise DataError("object (pickled) .npy arrays are not supported "
                            "(ml-4m's sam_instance); exclude this modality") from None
        raise DataError(f"cannot decode .{extension} file ({error})") from None
    except Exception as error:
        raise DataError(f"cannot decode .{extension} file ({error})") from None
    if field.startswith("det"):
        return canonical_detections(value)
    if field.startswith("caption"):
        return canonical_caption(value)
    return value


# ---------------------------------------------------------------------------------------------
# Image folders: root/<folder>/<any/sub/dirs>/<key>.<ext>

class ImageFolderSource:
    """ml-4m's MultiModalDatasetFolder layout, one folder per modality, as a random-access source.

    Samples are the sorted file lists of the folders; unlike ml-4m (which pairs files by position)
    the relative paths without extension must agree across folders, else the first mismatch is an
    error. `fields` maps record field -> folder (default: the same name).
    """

    def __init__(self, root: str | os.PathLike, fields: Sequence[str] | Mapping[str, str]):
        self.root = pathlib.Path(root)
        self.fields = dict(fields) if isinstance(fields, Mapping) else {f: f for f in fields}
        listings = {}
        for field, folder in self.fields.items():
            directory = self.root / folder
            if not directory.is_dir():
                raise DataError(f"modality folder {folder!r} does not exist", file=str(directory))
            listings[field] = self._list(directory)
        first_field = next(iter(self.fields))
        self._keys = [key for key, _ in listings[first_field]]
        for field, files in listings.items():
            keys = [key for key, _ in files]
            if keys != self._keys:
                self._report_mismatch(first_field, field, keys)
        self._files = {field: [path for _, path in files] for field, files in listings.items()}

    @staticmethod
    def _list(directory: pathlib.Path) -> list[tuple[str, pathlib.Path]]:
        files = []
        for path in directory.rglob("*"):
            if path.is_file():
                key, extension = split_extension(os.fspath(path.relative_to(directory)))
                if extension.lower() in FILE_EXTENSIONS:
                    files.append((key, path))
        return sorted(files)

    def _report_mismatch(self, first_field: str, field: str, keys: list[str]) -> None:
        for index, (a, b) in enumerate(zip(self._keys, keys, strict=False)):
            if a != b:
                raise DataError(f"folders disagree at sample {index}: {first_field!r} has {a!r}, "
                                f"{field!r} has {b!r}", file=str(self.root))
        raise DataError(f"folder {self.fields[first_field]!r} has {len(self._keys)} files but "
                        f"{self.fields[field]!r} has {len(keys)}", file=str(self.root))

    def __len__(self) -> int:
        return len(self._keys)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        record = {}
        for field, files in self._files.items():
            path = files[index]
            try:
                record[field] = decode_member(field, split_extension(path.name)[1].lower(),
                                              path.read_bytes())
            except DataError as error:
                raise error.located(file=str(path), index=index, field=field) from None
        record[FILE_KEY] = str(self.root / self._keys[index])
        record[INDEX_KEY] = index
        return record


# ---------------------------------------------------------------------------------------------
# ml-4m's webdataset layout: root/<folder>/shard-XXXXX.tar, aligned across folders.

@dataclasses.dataclass(frozen=True)
class _Member:
    key: str
    field: str
    extension: str
    offset: int
    size: int


def _scan_tar(path: pathlib.Path, folder_field: str) -> list[list[_Member]]:
    """Members of one tar grouped into samples (consecutive members sharing a key)."""
    samples: list[list[_Member]] = []
    try:
        with tarfile.open(path, "r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                key, extension = split_extension(info.name)
                if not extension or os.path.basename(key).startswith("__"):
                    continue
                field, extension = folder_field, extension
                base, dot, rest = extension.partition(".")
                if dot and extension != "json.gz":  # multimodal tar: <key>.<modality>.<ext>
                    field, extension = base, rest
                member = _Member(key, field, extension.lower(), info.offset_data, info.size)
                if samples and samples[-1][0].key == key:
                    samples[-1].append(member)
                else:
                    samples.append([member])
    except (tarfile.TarError, OSError, EOFError) as error:
        raise DataError(f"cannot read tar shard ({error}): truncated or corrupt", file=str(path)) \
            from None
    return samples


class Ml4mShardSource:
    """Random access over ml-4m's pre-tokenized webdataset shards (tar files per modality).

    `root/<folder>/<shard>.tar` for every folder in `fields` (record field -> folder, default the
    same name); every folder must hold the same shard names with the same sample keys in the same
    order, as ml-4m requires. `shards` selects shard file names (default: all of the first folder's
    `*.tar`). Construction reads every tar header (not the data) to build the index.
    """

    def __init__(self, root: str | os.PathLike, fields: Sequence[str] | Mapping[str, str],
                 shards: Sequence[str] | None = None):
        self.root = pathlib.Path(root)
        self.fields = dict(fields) if isinstance(fields, Mapping) else {f: f for f in fields}
        first_folder = self.root / next(iter(self.fields.values()))
        if shards is None:
            shards = sorted(p.name for p in first_folder.glob("*.tar"))
            if not shards:
                raise DataError("no *.tar shards found", file=str(first_folder))
        self.shards = list(shards)
        self._samples: list[tuple[str, int, dict[str, tuple[pathlib.Path, _Member]]]] = []
        for shard in self.shards:
            self._samples.extend(self._index_shard(shard))

    def shard_paths(self, shard: str) -> dict[str, pathlib.Path]:
        return {field: self.root / folder / shard for field, folder in self.fields.items()}

    def _index_shard(self, shard: str):
        per_field = {}
        for field, path in self.shard_paths(shard).items():
            if not path.exists():
                raise DataError(f"shard {shard!r} is missing for modality folder "
                                f"{self.fields[field]!r}", file=str(path))
            per_field[field] = (path, _scan_tar(path, field))
        first_field = next(iter(per_field))
        first_path, first_samples = per_field[first_field]
        samples = []
        for position, members in enumerate(first_samples):
            key = members[0].key
            sample = {}
            for path, field_samples in per_field.values():
                if position >= len(field_samples):
                    raise DataError(f"has {len(field_samples)} samples but {first_path} has "
                                    f"{len(first_samples)}", file=str(path))
                other = field_samples[position]
                if other[0].key != key:
                    raise DataError(f"sample keys diverge at position {position}: {other[0].key!r}"
                                    f" here, {key!r} in {first_path}", file=str(path))
                for member in other:
                    sample[member.field] = (path, member)
            samples.append((key, position, sample))
        for path, field_samples in per_field.values():
            if len(field_samples) != len(first_samples):
                raise DataError(f"has {len(field_samples)} samples but {first_path} has "
                                f"{len(first_samples)}", file=str(path))
        return samples

    def __len__(self) -> int:
        return len(self._samples)

    def read_raw(self, index: int) -> dict[str, tuple[str, bytes]]:
        """Undecoded sample: field -> (extension, bytes), plus its key and shard position."""
        key, position, sample = self._samples[int(index)]
        raw = {}
        for field, (path, member) in sample.items():
            with open(path, "rb") as file:
                file.seek(member.offset)
                data = file.read(member.size)
            if len(data) != member.size:
                raise DataError(f"member {member.key}.{member.extension} is truncated",
                                file=str(path), index=position, field=field)
            raw[field] = (member.extension, data)
        return raw

    def location(self, index: int) -> tuple[str, int, str]:
        """(first field's tar path, sample position in its shard, sample key)."""
        key, position, sample = self._samples[int(index)]
        path = next(iter(sample.values()))[0]
        return str(path), position, key

    def __getitem__(self, index: int) -> dict[str, Any]:
        file, position, _ = self.location(index)
        sample = self._samples[int(index)][2]
        record = {}
        for field, (extension, data) in self.read_raw(index).items():
            try:
                record[field] = decode_member(field, extension, data)
            except DataError as error:
                raise error.located(file=str(sample[field][0]), index=position, field=field) \
                    from None
        record[FILE_KEY] = file
        record[INDEX_KEY] = position
        return record

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for index in range(len(self)):
            yield self[index]
