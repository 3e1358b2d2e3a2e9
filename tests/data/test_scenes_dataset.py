import numpy as np
import pytest

from fourm_jax.data import records, scenes, scenes_dataset

# ml-4m's MetadataTransform key table (fourm/data/modality_transforms.py)
ML4M_METADATA_KEYS = {
    "original_width", "original_height", "caption_n_chars", "caption_n_words",
    "caption_n_sentences", "n_humans", "n_sam_instances", "n_coco_instances",
    "coco_instance_diversity", "colorfulness", "brightness", "contrast", "saturation", "entropy",
    "walkability", "objectness", "semantic_diversity", "geometric_complexity", "occlusion_score",
    "watermark_score", "aesthetic_score"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("scenes")
    scenes_dataset.build(data_dir, num_train=7, num_validation=3, image_size=32, seed=5,
                         shard_size=3, progress=False)
    return data_dir


def test_dataset_reads_back_exactly_what_was_generated(built):
    for split, count in (("train", 7), ("validation", 3)):
        dataset = records.open_dataset(scenes_dataset.tfds_name(32), split, data_dir=built)
        assert len(dataset) == count
        for i in range(count):
            record, expected = dataset[i], scenes_dataset.example(5, split, i, 32)
            for field in ("rgb", "depth", "normal", "semseg"):
                np.testing.assert_array_equal(record[field], expected[field])
                assert record[field].dtype == expected[field].dtype
            np.testing.assert_array_equal(record["det"]["boxes"], expected["det"]["boxes"])
            assert record["det"]["class_name"] == expected["det"]["class_name"]
            for field in ("caption", "metadata", "color_palette", "scene"):
                assert record[field] == expected[field], field
    info = records.open_dataset(scenes_dataset.dataset_dir(built, 32), "train").info
    assert info.metadata["class_names"] == list(scenes.CLASS_NAMES)
    assert info.features["rgb"].shape == (32, 32, 3)


def test_examples_are_deterministic_and_distinct():
    first = scenes_dataset.example(0, "train", 4)
    np.testing.assert_array_equal(first["rgb"], scenes_dataset.example(0, "train", 4)["rgb"])
    assert first["caption"] == scenes_dataset.example(0, "train", 4)["caption"]
    assert not np.array_equal(first["rgb"], scenes_dataset.example(0, "train", 5)["rgb"])
    assert not np.array_equal(first["rgb"], scenes_dataset.example(0, "validation", 4)["rgb"])
    assert not np.array_equal(first["rgb"], scenes_dataset.example(1, "train", 4)["rgb"])
    assert first["rgb"].shape == (64, 64, 3)


def test_metadata_and_palette_have_ml4m_forms():
    example = scenes_dataset.example(0, "train", 2)
    metadata = example["metadata"]
    assert set(metadata) <= ML4M_METADATA_KEYS
    assert metadata["original_width"] == metadata["original_height"] == 64
    assert metadata["caption_n_words"] == len(example["caption"].split())
    assert metadata["n_sam_instances"] == len(example["det"]["class_name"])
    palette = example["color_palette"]
    assert isinstance(palette, list) and len(palette) == 1
    assert sorted(palette[0], key=int) == [str(k) for k in range(1, 8)]
    for k, colors in palette[0].items():
        assert len(colors) == int(k)
        assert all(len(c) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in c)
                   for c in colors)
    # the one-colour palette is the mean colour of the (sub-sampled) image
    np.testing.assert_allclose(palette[0]["1"][0], example["rgb"].reshape(-1, 3).mean(0), atol=12)


def test_finished_build_is_kept_and_other_settings_are_refused(built):
    directory = scenes_dataset.dataset_dir(built, 32)
    stamp = (directory / "dataset_info.json").stat().st_mtime_ns
    assert scenes_dataset.build(built, num_train=7, num_validation=3, image_size=32, seed=5,
                                shard_size=3, progress=False) == directory
    assert (directory / "dataset_info.json").stat().st_mtime_ns == stamp
    with pytest.raises(FileExistsError, match="other settings"):
        scenes_dataset.build(built, num_train=7, num_validation=3, image_size=32, seed=6,
                             progress=False)
