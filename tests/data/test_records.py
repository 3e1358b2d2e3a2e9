import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from fourm_jax.data import records
from fourm_jax.data.errors import DataError

FEATURES = {
    "tok_rgb@224": records.token_grid_feature(6),
    "crop_settings": records.crop_settings_feature(),
    "rgb": records.image_feature(3),
    "depth": records.float_map_feature(4),
    "caption": records.text_list_feature(),
    "title": records.text_feature(),
    "det": records.detections_feature(),
    "metadata": records.text_feature(),
}


def make_example(i: int) -> dict:
    rng = np.random.default_rng(i)
    n_boxes = i % 3
    return {
        "tok_rgb@224": rng.integers(0, 16384, size=(2, 6)).astype(np.int16),
        "crop_settings": np.array([[0, 0, 5, 5, 0], [1, 0, 4, 4, 1]], np.int32),
        "rgb": rng.integers(0, 256, size=(5, 7, 3)).astype(np.uint8),
        "depth": rng.random((4, 4)).astype(np.float32),
        "caption": [f"caption {i} crop {c}" for c in range(2)],
        "title": f"title é {i}",
        "det": {"boxes": rng.random((n_boxes, 4)).astype(np.float32),
                "class_name": [f"class{k}" for k in range(n_boxes)],
                "score": rng.random(n_boxes).astype(np.float32)},
        "metadata": {"brightness": float(i), "n_humans": i},
    }


def shard_examples(shard: int, per_shard: int = 3, total: int = 7):
    for i in range(shard * per_shard, min(total, (shard + 1) * per_shard)):
        yield make_example(i)


def new_writer(root) -> records.DatasetWriter:
    return records.DatasetWriter(root / "toy" / "1.0.0", "toy", FEATURES, json_fields=["metadata"],
                                 metadata={"note": "test"})


def build(root, total=7, per_shard=3):
    writer = new_writer(root)
    shards = -(-total // per_shard)
    make = functools.partial(shard_examples, per_shard=per_shard, total=total)
    assert records.write_split(writer, "train", shards, make, progress=False) == total
    return writer.finalize({"train": shards})


def assert_same(record, example):
    for key in ("tok_rgb@224", "crop_settings", "rgb", "depth"):
        np.testing.assert_array_equal(record[key], example[key])
        assert record[key].dtype == np.asarray(example[key]).dtype
    assert record["caption"] == example["caption"]
    assert record["title"] == example["title"]
    assert record["metadata"] == example["metadata"]
    np.testing.assert_array_equal(record["det"]["boxes"], example["det"]["boxes"])
    assert record["det"]["class_name"] == example["det"]["class_name"]
    np.testing.assert_array_equal(record["det"]["score"], example["det"]["score"])


def test_roundtrip_by_directory_and_by_name(tmp_path):
    directory = build(tmp_path)
    by_dir = records.open_dataset(directory, "train")
    by_name = records.open_dataset("toy", "train", data_dir=tmp_path)
    assert len(by_dir) == len(by_name) == 7
    assert by_dir.info.metadata["note"] == "test"
    for i in range(7):
        assert_same(by_dir[i], make_example(i))
        assert_same(by_name[i], make_example(i))
    record = by_dir[4]
    assert os.path.basename(record[records.FILE_KEY]) == "toy-train.array_record-00001-of-00003"
    assert record[records.INDEX_KEY] == 1
    with pytest.raises(IndexError):
        by_dir[7]


def test_reading_needs_no_tensorflow(tmp_path):
    directory = build(tmp_path)
    script = (  # hide tensorflow from the import system, as if it were not installed
        "import importlib.machinery, sys\n"
        "class Finder(importlib.machinery.PathFinder):\n"
        "    @classmethod\n"
        "    def find_spec(cls, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'tensorflow':\n"
        "            return None\n"
        "        return importlib.machinery.PathFinder.find_spec(name, path, target)\n"
        "sys.meta_path = [Finder if f is importlib.machinery.PathFinder else f\n"
        "                 for f in sys.meta_path]\n"
        "import importlib.util; assert importlib.util.find_spec('tensorflow') is None\n"
        "from fourm_jax.data import records\n"
        f"ds = records.open_dataset({str(directory)!r}, 'train')\n"
        "print(len(ds), ds[6]['title'], 'tensorflow' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[-2] == "7 title é 6 False"


def test_write_split_resumes_after_a_failure_without_rewriting_finished_shards(tmp_path):
    writer = new_writer(tmp_path)

    def failing(shard):
        yield from shard_examples(shard)
        if shard == 1:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        records.write_split(writer, "train", 3, failing, progress=False)
    finished = writer.shard_path("train", 0, 3)
    assert finished.exists()
    assert not writer.shard_path("train", 1, 3).exists()  # never a partial shard under its name
    assert sorted(p.name for p in writer.dataset_dir.iterdir()) == [finished.name]
    stamp = finished.stat().st_mtime_ns
    with pytest.raises(FileNotFoundError, match="missing"):
        writer.finalize({"train": 3})

    calls = []

    def recording(shard):
        calls.append(shard)
        return shard_examples(shard)

    assert records.write_split(writer, "train", 3, recording, progress=False) == 7
    assert sorted(calls) == [1, 2]
    assert finished.stat().st_mtime_ns == stamp
    writer.finalize({"train": 3})
    dataset = records.open_dataset(writer.dataset_dir, "train")
    for i in range(7):
        assert_same(dataset[i], make_example(i))


def test_write_split_in_worker_processes(tmp_path):
    writer = new_writer(tmp_path)
    make = functools.partial(shard_examples, per_shard=3, total=7)
    assert records.write_split(writer, "train", 3, make, num_workers=2, progress=False) == 7
    dataset = records.open_dataset(writer.finalize({"train": 3}), "train")
    assert_same(dataset[5], make_example(5))


def test_serialize_names_missing_and_unknown_fields(tmp_path):
    writer = new_writer(tmp_path)
    example = make_example(0)
    del example["depth"]
    example["extra"] = 1
    with pytest.raises(DataError, match=r"missing \['depth'\], unknown \['extra'\]") as info:
        writer.write_shard("train", 0, 1, [make_example(1), example])
    assert info.value.index == 1 and "toy-train.array_record-00000-of-00001" in info.value.file
    assert not writer.shard_path("train", 0, 1).exists()


def test_truncated_shard_is_an_error_naming_the_file(tmp_path):
    directory = build(tmp_path)
    shard = directory / "toy-train.array_record-00001-of-00003"
    with open(shard, "r+b") as file:
        file.truncate(shard.stat().st_size - 100)
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        records.open_dataset(directory, "train")
    assert info.value.file == str(shard)


def test_corrupt_record_is_an_error_naming_file_and_record(tmp_path):
    writer = new_writer(tmp_path)
    writer.write_shard("train", 0, 1, shard_examples(0))
    writer.finalize({"train": 1})
    shard = writer.shard_path("train", 0, 1)
    data = bytearray(shard.read_bytes())
    used = max(i for i in range(0, 65536, 16) if any(data[i:i + 16]))  # end of the record chunks
    middle = used // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    shard.write_bytes(bytes(data))
    dataset = records.open_dataset(writer.dataset_dir, "train", verify=False)
    errors = []
    for i in range(len(dataset)):
        try:
            dataset[i]
        except DataError as error:
            errors.append(error)
    assert errors, "damaging the shard went unnoticed"
    assert all(error.file == str(shard) and error.index is not None for error in errors)
    assert all(f"record {error.index}" in str(error) for error in errors)


def test_missing_metadata_means_an_unfinished_build(tmp_path):
    writer = new_writer(tmp_path)
    writer.write_shard("train", 0, 1, shard_examples(0))
    with pytest.raises(DataError, match="unfinished build"):
        records.open_dataset(writer.dataset_dir, "train")


def test_metadata_files_are_tfds_readable(tmp_path):
    directory = build(tmp_path)
    info = json.loads((directory / "dataset_info.json").read_text())
    assert info["fileFormat"] == "array_record"
    assert [int(n) for n in info["splits"][0]["shardLengths"]] == [3, 3, 1]
    assert json.loads((directory / "metadata.json").read_text())["json_fields"] == ["metadata"]


def assert_tree_equal(actual, expected, path="record"):
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected), path
        for key in expected:
            assert_tree_equal(actual[key], expected[key], f"{path}/{key}")
    elif isinstance(expected, np.ndarray):
        assert actual.dtype == expected.dtype and actual.shape == expected.shape, path
        np.testing.assert_array_equal(actual, expected, err_msg=path)
    else:
        assert list(actual) == list(expected) if isinstance(expected, list) else actual == expected, path


@pytest.mark.parametrize("image_size", [None, 8])
def test_fast_decoder_matches_tfds(tmp_path, image_size):
    features = dict(FEATURES, normal=records.image_feature(3, image_size),
                    semseg=records.image_feature(1, image_size),
                    fixed_depth=records.float_map_feature(image_size),
                    size=records.image_size_feature(), ids=records.token_ids_feature(),
                    crop_ids=records.token_ids_feature(per_crop=True))
    writer = records.DatasetWriter(tmp_path, "toy", features)
    rng = np.random.default_rng(0)
    for i in range(3):
        side = image_size or 5 + i
        example = dict(make_example(i), normal=rng.integers(0, 256, (side, side, 3), np.uint8),
                       semseg=rng.integers(0, 6, (side, side, 1), np.uint8),
                       fixed_depth=rng.random((side, side), np.float32),
                       size=np.array([side, side], np.int32), ids=np.arange(i, dtype=np.int32),
                       crop_ids=np.arange(3 * i + 3, dtype=np.int32).reshape(3, i + 1),
                       metadata="{}")
        serialized = writer.serialize(example)
        decoder = records._Decoder(writer.features)
        assert decoder.steps is not None  # every feature here has a fast step
        decoded = decoder(serialized)
        assert_tree_equal(decoded, writer.features.deserialize_example_np(serialized))


def test_decoder_defers_to_tfds_for_other_features():
    import tensorflow_datasets as tfds

    features = tfds.features.FeaturesDict({"label": tfds.features.ClassLabel(names=["a", "b"]),
                                           "x": tfds.features.Tensor(shape=(2,), dtype=np.int64)})
    decoder = records._Decoder(features)
    assert decoder.steps is None
    serialized = features.serialize_example({"label": 1, "x": np.array([3, 4])})
    assert_tree_equal(decoder(serialized), features.deserialize_example_np(serialized))


def test_reads_a_dataset_whose_metadata_tfds_wrote(tmp_path):
    """A dataset made with TFDS's own tools (tfds.folder_dataset.write_metadata over ArrayRecord
    shards in TFDS's default writer options), with features we do not write ourselves."""
    import tensorflow_datasets as tfds
    from array_record.python import array_record_module

    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(4, 4, 3)), "label": tfds.features.ClassLabel(names=["a", "b"]),
        "text": tfds.features.Text(), "objects": tfds.features.Sequence({
            "bbox": tfds.features.BBoxFeature(), "label": tfds.features.ClassLabel(num_classes=3)})})
    directory = tmp_path / "other" / "1.0.0"
    directory.mkdir(parents=True)
    lengths = [3, 2]
    for shard, length in enumerate(lengths):
        writer = array_record_module.ArrayRecordWriter(
            str(directory / f"other-train.array_record-{shard:05d}-of-00002"), "group_size:1")
        for k in range(length):
            i = 3 * shard + k
            writer.write(features.serialize_example({
                "image": records.encode_png(np.full((4, 4, 3), i, np.uint8)), "label": i % 2,
                "text": f"text {i}", "objects": {"bbox": np.array([[0.1, 0.2, 0.5, 0.6]] * (i % 3),
                                                                  np.float32).reshape(-1, 4),
                                                 "label": np.arange(i % 3)}}))
        writer.close()
    tfds.folder_dataset.write_metadata(
        data_dir=directory, features=features, check_data=False,
        split_infos=[tfds.core.SplitInfo(name="train", shard_lengths=lengths, num_bytes=0)])
    dataset = records.open_dataset("other", "train", data_dir=tmp_path)
    assert len(dataset) == 5
    record = dataset[4]
    assert record["text"] == "text 4" and record["label"] == 0
    np.testing.assert_array_equal(record["image"], np.full((4, 4, 3), 4, np.uint8))
    np.testing.assert_allclose(record["objects"]["bbox"], [[0.1, 0.2, 0.5, 0.6]] * 1, rtol=1e-6)
    assert record[records.FILE_KEY].endswith("other-train.array_record-00001-of-00002")
