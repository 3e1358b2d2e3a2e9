import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from fourm_jax.data import ml4m_import, records
from fourm_jax.data.errors import DataError
from tests.data.ml4m_shards import IMAGE_SHAPE, TOKEN_MODALITIES, expected_sample, write_ml4m_shards

FOLDERS = [*TOKEN_MODALITIES, "crop_settings", "rgb", "caption", "det", "metadata"]


def check(record, i):
    expected = expected_sample(i)
    for name in TOKEN_MODALITIES:
        assert record[name].dtype == np.int16
        np.testing.assert_array_equal(record[name], expected[name])
    assert record["crop_settings"].dtype == np.int32
    np.testing.assert_array_equal(record["crop_settings"], expected["crop_settings"])
    np.testing.assert_array_equal(record["rgb"], expected["rgb"])  # PNG bytes kept: lossless
    np.testing.assert_array_equal(record["image_size"], IMAGE_SHAPE[:2])
    assert record["caption"] == expected["caption"]
    assert record["metadata"] == expected["metadata"]
    instances = expected["det"]["instances"]
    assert record["det"]["class_name"] == [d["class_name"] for d in instances]
    np.testing.assert_allclose(record["det"]["boxes"],
                               np.array([d["boxes"] for d in instances]).reshape(-1, 4), rtol=1e-6)


def test_import_converts_every_sample_and_resumes(tmp_path):
    indices = write_ml4m_shards(tmp_path / "src", FOLDERS, num_shards=3, per_shard=4)
    out = tmp_path / "out"
    directory = ml4m_import.import_ml4m_shards(tmp_path / "src", out, FOLDERS, progress=False)
    dataset = records.open_dataset(directory, "train")
    assert len(dataset) == 12 and len(dataset.files) == 3
    for position, i in enumerate(indices):
        check(dataset[position], i)

    kept = sorted(out.glob("ml4m-train.array_record-*"))
    stamps = [p.stat().st_mtime_ns for p in kept]
    kept[1].unlink()
    (out / "dataset_info.json").unlink()
    ml4m_import.import_ml4m_shards(tmp_path / "src", out, FOLDERS, progress=False)
    assert kept[0].stat().st_mtime_ns == stamps[0] and kept[2].stat().st_mtime_ns == stamps[2]
    dataset = records.open_dataset(out, "train")
    for position, i in enumerate(indices):
        check(dataset[position], i)


def test_import_tool_prints_a_summary(tmp_path):
    write_ml4m_shards(tmp_path / "src", ["tok_rgb@224", "caption"], num_shards=2, per_shard=2)
    result = subprocess.run(
        [sys.executable, "tools/import_ml4m_shards.py", "--src", str(tmp_path / "src"),
         "--folders", "tok_rgb@224,caption", "--out", str(tmp_path / "out"), "--no-progress"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["records"] == 4 and summary["fields"] == ["caption", "tok_rgb@224"]


def test_out_of_range_token_ids_are_an_error(tmp_path):
    write_ml4m_shards(tmp_path / "src", ["tok_rgb@224"], num_shards=1, per_shard=2)
    shard = tmp_path / "src" / "tok_rgb@224" / "shard-00000.tar"
    with tarfile.open(shard, "w") as archive:
        for i, value in enumerate([np.zeros((1, 196), np.int64), np.full((1, 196), 40000)]):
            buffer = io.BytesIO()
            np.save(buffer, value)
            info = tarfile.TarInfo(f"sample{i:06d}.npy")
            info.size = buffer.tell()
            buffer.seek(0)
            archive.addfile(info, buffer)
    with pytest.raises(DataError, match="beyond int16") as info:
        ml4m_import.import_ml4m_shards(tmp_path / "src", tmp_path / "out", ["tok_rgb@224"],
                                       progress=False)
    assert info.value.index == 1 and info.value.field == "tok_rgb@224"
    assert not list((tmp_path / "out").glob("ml4m-train.array_record-*"))


def test_unsupported_modalities_are_refused(tmp_path):
    write_ml4m_shards(tmp_path / "src", ["caption"], num_shards=1, per_shard=1)
    (tmp_path / "src" / "t5_caption").mkdir()
    with tarfile.open(tmp_path / "src" / "t5_caption" / "shard-00000.tar", "w") as archive:
        buffer = io.BytesIO()
        np.savez(buffer, emb=np.zeros((1, 2, 4), np.float32))
        info = tarfile.TarInfo("sample000000.npz")
        info.size = buffer.tell()
        buffer.seek(0)
        archive.addfile(info, buffer)
    with pytest.raises(DataError, match="T5 caption embeddings"):
        ml4m_import.import_ml4m_shards(tmp_path / "src", tmp_path / "out",
                                       ["caption", "t5_caption"], progress=False)
