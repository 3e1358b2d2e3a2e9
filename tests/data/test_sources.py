import io
import tarfile

import numpy as np
import pytest

from fourm_jax.data import records, sources
from fourm_jax.data.errors import DataError
from tests.data.ml4m_shards import TOKEN_MODALITIES, expected_sample, write_image_folders, write_ml4m_shards

FOLDERS = [*TOKEN_MODALITIES, "crop_settings", "rgb", "caption", "det", "metadata"]


def assert_record(record, i):
    expected = expected_sample(i)
    for name in (*TOKEN_MODALITIES, "crop_settings", "rgb"):
        np.testing.assert_array_equal(record[name], expected[name])
    assert record["caption"] == expected["caption"]
    assert record["metadata"] == expected["metadata"]
    instances = expected["det"]["instances"]
    np.testing.assert_allclose(record["det"]["boxes"],
                               np.array([d["boxes"] for d in instances]).reshape(-1, 4), rtol=1e-6)
    assert record["det"]["class_name"] == [d["class_name"] for d in instances]
    np.testing.assert_allclose(record["det"]["score"], [d["score"] for d in instances], rtol=1e-6)


def test_ml4m_shards_read_in_order_with_provenance(tmp_path):
    indices = write_ml4m_shards(tmp_path, FOLDERS, num_shards=2, per_shard=3)
    source = sources.Ml4mShardSource(tmp_path, FOLDERS)
    assert len(source) == 6
    for position, i in enumerate(indices):
        record = source[position]
        assert_record(record, i)
        assert record[records.FILE_KEY].endswith(f"shard-{position // 3:05d}.tar")
        assert record[records.INDEX_KEY] == position % 3


def test_ml4m_shards_select_shards_and_rename_fields(tmp_path):
    write_ml4m_shards(tmp_path, FOLDERS, num_shards=2, per_shard=3)
    source = sources.Ml4mShardSource(tmp_path, {"tokens": "tok_rgb@224", "caption": "caption"},
                                     shards=["shard-00001.tar"])
    assert len(source) == 3
    np.testing.assert_array_equal(source[0]["tokens"], expected_sample(3)["tok_rgb@224"])


def test_ml4m_shards_with_diverging_keys_are_an_error(tmp_path):
    write_ml4m_shards(tmp_path, ["tok_rgb@224"], num_shards=1, per_shard=3)
    write_ml4m_shards(tmp_path, ["caption"], num_shards=1, per_shard=3, start=1)
    with pytest.raises(DataError, match="sample keys diverge at position 0") as info:
        sources.Ml4mShardSource(tmp_path, ["tok_rgb@224", "caption"])
    assert info.value.file.endswith("caption/shard-00000.tar")


def test_ml4m_shard_missing_for_a_modality_is_an_error(tmp_path):
    write_ml4m_shards(tmp_path, ["tok_rgb@224"], num_shards=2, per_shard=2)
    write_ml4m_shards(tmp_path, ["caption"], num_shards=1, per_shard=2)
    with pytest.raises(DataError, match="shard 'shard-00001.tar' is missing for modality folder"):
        sources.Ml4mShardSource(tmp_path, ["tok_rgb@224", "caption"])


def test_truncated_ml4m_shard_is_an_error_naming_the_file(tmp_path):
    write_ml4m_shards(tmp_path, ["tok_rgb@224", "caption"], num_shards=1, per_shard=3)
    shard = tmp_path / "tok_rgb@224" / "shard-00000.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:1200])  # cuts the second member's data
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        sources.Ml4mShardSource(tmp_path, ["tok_rgb@224", "caption"])
    assert info.value.file == str(shard)


def test_undecodable_member_names_file_record_and_field(tmp_path):
    write_ml4m_shards(tmp_path, ["caption"], num_shards=1, per_shard=2)
    (tmp_path / "tok_rgb@224").mkdir()
    with tarfile.open(tmp_path / "tok_rgb@224" / "shard-00000.tar", "w") as archive:
        for i, payload in enumerate([b"\x93NUMPY garbage", b"also garbage"]):
            info = tarfile.TarInfo(f"sample{i:06d}.npy")
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    source = sources.Ml4mShardSource(tmp_path, ["caption", "tok_rgb@224"])
    with pytest.raises(DataError, match="cannot decode .npy file") as info:
        source[1]
    assert info.value.field == "tok_rgb@224" and info.value.index == 1
    assert info.value.file.endswith("tok_rgb@224/shard-00000.tar")


def test_multimodal_tar_members_keep_their_modality(tmp_path):
    (tmp_path / "mixed").mkdir()
    with tarfile.open(tmp_path / "mixed" / "shard-00000.tar", "w") as archive:
        for name, payload in [("a.caption.txt", b"hello"), ("a.tok_rgb@224.npy", None)]:
            if payload is None:
                buffer = io.BytesIO()
                np.save(buffer, np.arange(4, dtype=np.int16).reshape(1, 4))
                payload = buffer.getvalue()
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    record = sources.Ml4mShardSource(tmp_path, ["mixed"])[0]
    assert record["caption"] == "hello"
    np.testing.assert_array_equal(record["tok_rgb@224"], [[0, 1, 2, 3]])


def test_image_folders_align_samples_by_path(tmp_path):
    write_image_folders(tmp_path, FOLDERS, count=5)
    source = sources.ImageFolderSource(tmp_path, FOLDERS)
    assert len(source) == 5
    # sorted by relative path: class0/img0000, class0/img0002, class0/img0004, class1/img0001, ...
    for position, i in enumerate([0, 2, 4, 1, 3]):
        assert_record(source[position], i)
        assert source[position][records.FILE_KEY].endswith(f"class{i % 2}/img{i:04d}")


def test_image_folders_that_disagree_are_an_error(tmp_path):
    write_image_folders(tmp_path, ["rgb", "caption"], count=3)
    (tmp_path / "caption" / "class0" / "img0002.json").rename(
        tmp_path / "caption" / "class0" / "img0009.json")
    with pytest.raises(DataError, match="'rgb' has 'class0/img0002', 'caption' has 'class0/img0009'"):
        sources.ImageFolderSource(tmp_path, ["rgb", "caption"])


def test_corrupt_image_in_folder_names_file_and_field(tmp_path):
    write_image_folders(tmp_path, ["rgb", "caption"], count=2)
    broken = tmp_path / "rgb" / "class1" / "img0001.png"
    broken.write_bytes(broken.read_bytes()[:40])
    source = sources.ImageFolderSource(tmp_path, ["rgb", "caption"])
    with pytest.raises(DataError, match="cannot decode .png file") as info:
        source[1]
    assert info.value.file == str(broken) and info.value.field == "rgb"


def test_caption_and_detection_forms():
    assert sources.canonical_caption([{"caption": "a"}, "b"]) == ["a", "b"]
    assert sources.canonical_caption({"caption": "c"}) == "c"
    with pytest.raises(DataError, match="caption must be a string"):
        sources.canonical_caption(3)
    with pytest.raises(DataError, match="lacks boxes/class_name/score"):
        sources.canonical_detections({"instances": [{"boxes": [0, 0, 1, 1]}]})
    empty = sources.canonical_detections({"instances": []})
    assert empty["boxes"].shape == (0, 4) and empty["class_name"] == []
