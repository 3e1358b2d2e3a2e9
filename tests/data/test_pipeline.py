import json
import logging
import os
import re
import socket
import subprocess
import sys

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest

from fourm_jax import masking
from fourm_jax import modalities as registry
from fourm_jax import sharding as mesh_sharding
from fourm_jax.data import pipeline, records, transforms
from fourm_jax.data.errors import DataError
from fourm_jax.modalities import Kind
from fourm_jax.text import formats as text_formats
from fourm_jax.text import layout
from fourm_jax.text.tokenizer import load_tokenizer
from tests.conftest import SHARED_DIR
from tests.data import ml4m_shards

VOCAB = str(SHARED_DIR / "vocab" / "text_tokenizer_4m_wordpiece_30k.json")
TOKENIZER = load_tokenizer(VOCAB)

TOKENS = ("tok_rgb@224", "tok_depth@224")
PAIRED = (*TOKENS, "caption", "det")
N_CROPS = 3


class _Mixture:
    def __init__(self, modalities):
        self.modalities = tuple(modalities)


class StandInMasker:
    """Stands in for 4M's masker (same contract): every provided token is an input, a random
    half of them also a target; sequences are written from slot 0; absent modalities are fully
    masked placeholders."""

    def __init__(self, modalities, outputs):
        self.mixture = _Mixture(modalities)
        self.outputs = tuple(outputs)

    def mask_batch(self, examples, rng):
        return jax.tree.map(lambda *rows: np.stack(rows), *[self.mask(e, rng) for e in examples])

    def mask(self, example, rng):
        out = {}
        for name in self.outputs:
            spec = registry.get(name)
            length = 2 * (spec.max_tokens + 1) if spec.kind is Kind.SEQUENCE else spec.max_tokens
            present = name in example
            if spec.kind is Kind.IMAGE_PIXELS:
                tensor = (example[name] if present else
                          np.zeros((3, spec.input_size, spec.input_size), np.float32))
            else:
                tensor = np.zeros(length, np.int32)
                if present:
                    ids = np.asarray(example[name])
                    tensor[:len(ids)] = ids
            out[name] = dict(tensor=tensor, input_mask=np.full(length, not present),
                             target_mask=~present | (rng.random(length) < 0.5),
                             decoder_attention_mask=np.zeros(length, np.int32))
        return out


def decode_text(tensor):
    return TOKENIZER.decode([int(v) for v in tensor if v])


def paired_example(i):
    rng = np.random.default_rng(i)
    grids = {name: np.stack([np.full(196, 1000 + 10 * c + k, np.int16) for c in range(N_CROPS)])
             for k, name in enumerate(TOKENS, 1)}
    for grid in grids.values():
        grid[:, 0] = i  # record identity
    return dict(grids, crop_settings=np.array([[0, 4, 40, 40, 0], [2, 2, 30, 36, 1], [5, 0, 35, 35, 0]],
                                              np.int32),
                image_size=np.array([40, 48], np.int32),
                caption=[f"record {i} crop {c}" for c in range(N_CROPS)],
                det={"boxes": (rng.random((2, 4)) * 0.5 + [0, 0, 0.5, 0.5]).astype(np.float32),
                     "class_name": ["dog", "cat"], "score": np.ones(2, np.float32)})


def paired_features(token_dtype=np.int16):
    import tensorflow_datasets as tfds
    features = {name: tfds.features.Tensor(shape=(None, 196), dtype=token_dtype, encoding="bytes")
                for name in TOKENS}
    return dict(features, crop_settings=records.crop_settings_feature(),
                image_size=records.image_size_feature(), caption=records.text_list_feature(),
                det=records.detections_feature())


def write(directory, features, examples, shard_size=16):
    writer = records.DatasetWriter(directory, "test", features)
    examples = list(examples)
    shards = -(-len(examples) // shard_size)
    for shard in range(shards):
        writer.write_shard("train", shard, shards, examples[shard * shard_size:(shard + 1) * shard_size])
    return str(writer.finalize({"train": shards}))


@pytest.fixture(scope="module")
def paired_dir(tmp_path_factory):
    return write(tmp_path_factory.mktemp("paired"), paired_features(), map(paired_example, range(40)))


@pytest.fixture(scope="module")
def text_dir(tmp_path_factory):
    return write(tmp_path_factory.mktemp("text"), {"caption": records.text_feature()},
                 ({"caption": f"text only {i}"} for i in range(30)))


def mixture_config(names, input_tokens=64, target_tokens=64):
    alphas = {}
    for name in names:
        entry = dict(input_alphas=[0.5, 1000.0 if name == "rgb@224" else 0.0],
                     target_alphas=[0.0 if name == "rgb@224" else 0.5] * 2)
        if registry.get(name).kind is Kind.SEQUENCE:
            entry["keep"] = ["random", "random"]
        alphas[name] = entry
    return ml_collections.ConfigDict(dict(alphas=alphas, sampling_weights=None,
                                          input_tokens=input_tokens, target_tokens=target_tokens))


def config(paired_dir, *, outputs=PAIRED, masked=PAIRED, **overrides):
    dataset = pipeline.DatasetConfig("paired", paired_dir, StandInMasker(masked, outputs))
    return pipeline.PipelineConfig(**{"datasets": [dataset], "global_batch_size": 8,
                                      "text_tokenizer": VOCAB, **overrides})


def host_batches(cfg, count, **kwargs):
    iterator = iter(pipeline.host_dataset(cfg, **kwargs))
    return [next(iterator) for _ in range(count)]


def examples_of(batches):
    for batch in batches:
        size = len(batch["caption"]["tensor"])
        for row in range(size):
            yield jax.tree.map(lambda x, r=row: np.asarray(x)[r], batch)


def test_batches_are_global_arrays_sharded_over_data_and_fsdp(paired_dir):
    mesh = mesh_sharding.make_mesh(dict(data=2, fsdp=2, tensor=2))
    batch = next(iter(pipeline.build_dataset(config(paired_dir), mesh)))
    assert sorted(batch) == sorted(PAIRED)
    expected = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(("data", "fsdp")))
    for fields in batch.values():
        assert sorted(fields) == ["decoder_attention_mask", "input_mask", "target_mask", "tensor"]
        for array in fields.values():
            assert isinstance(array, jax.Array) and array.sharding.is_equivalent_to(expected, array.ndim)
            assert array.shape[0] == 8
    assert batch["tok_rgb@224"]["tensor"].shape == (8, 196)
    assert batch["caption"]["tensor"].shape == (8, 514)
    assert batch["caption"]["input_mask"].dtype == np.bool_


def test_every_modality_uses_the_same_crop(paired_dir):
    crops = []
    for example in examples_of(host_batches(config(paired_dir), 6)):
        rgb, depth = example["tok_rgb@224"]["tensor"], example["tok_depth@224"]["tensor"]
        crop = (rgb[1] - 1001) // 10
        assert depth[1] == 1002 + 10 * crop
        assert decode_text(example["caption"]["tensor"]) == f"record {rgb[0]} crop {crop}"
        crops.append(crop)
    assert set(crops) == {0, 1, 2}
    for example in examples_of(host_batches(config(paired_dir, datasets=[pipeline.DatasetConfig(
            "paired", paired_dir, StandInMasker(PAIRED, PAIRED), crop="center")]), 2)):
        assert example["tok_rgb@224"]["tensor"][1] == 1001


def test_stream_is_deterministic_and_depends_on_the_seed(paired_dir):
    first, again = host_batches(config(paired_dir), 3), host_batches(config(paired_dir), 3)
    jax.tree.map(np.testing.assert_array_equal, first, again)
    other = host_batches(config(paired_dir, seed=1), 3)
    assert not np.array_equal(first[0]["caption"]["tensor"], other[0]["caption"]["tensor"])


def to_numpy(batch):
    return jax.tree.map(np.asarray, batch)


@pytest.mark.parametrize("num_workers", [0, 2])
def test_restored_iterator_yields_exactly_the_same_batches(paired_dir, num_workers):
    mesh = mesh_sharding.make_mesh(dict(data=4, fsdp=2))
    cfg = config(paired_dir, num_workers=num_workers, datasets=[
        pipeline.DatasetConfig("paired", paired_dir, mixture_config(PAIRED))])  # 4M's masking
    iterator = iter(pipeline.build_dataset(cfg, mesh))
    for _ in range(7):  # past one epoch of the 40 records
        next(iterator)
    state = iterator.get_state()
    expected = [to_numpy(next(iterator)) for _ in range(4)]
    restored = iter(pipeline.build_dataset(cfg, mesh))
    restored.set_state(state)
    jax.tree.map(np.testing.assert_array_equal, [to_numpy(next(restored)) for _ in range(4)],
                 expected)


def test_iterator_state_round_trips_through_orbax(paired_dir, tmp_path):
    sharding = mesh_sharding.batch_sharding(mesh_sharding.make_mesh(dict(data=8)),
                                             mesh_sharding.DEFAULT_RULES)
    cfg = config(paired_dir, datasets=[
        pipeline.DatasetConfig("paired", paired_dir, mixture_config(PAIRED))])
    iterator = iter(pipeline.build_dataset(cfg, sharding))
    next(iterator)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
        manager.wait_until_finished()
    expected = [to_numpy(next(iterator)) for _ in range(3)]
    restored = iter(pipeline.build_dataset(cfg, sharding))
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.restore(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(restored)))
    jax.tree.map(np.testing.assert_array_equal, [to_numpy(next(restored)) for _ in range(3)],
                 expected)


def test_weighted_mixture_pads_missing_modalities(paired_dir, text_dir):
    datasets = [pipeline.DatasetConfig("paired", paired_dir, StandInMasker(PAIRED, PAIRED), weight=1),
                pipeline.DatasetConfig("text", text_dir, StandInMasker(["caption"], PAIRED), weight=3)]
    cfg = pipeline.PipelineConfig(datasets=datasets, global_batch_size=8, text_tokenizer=VOCAB)
    text_only = 0
    examples = list(examples_of(host_batches(cfg, 25)))
    for example in examples:
        caption = decode_text(example["caption"]["tensor"])
        if caption.startswith("text only"):
            text_only += 1
            for name in (*TOKENS, "det"):
                assert example[name]["input_mask"].all() and example[name]["target_mask"].all()
                assert not example[name]["tensor"].any()
        else:
            assert caption.startswith("record")
    assert abs(text_only / len(examples) - 0.75) < 0.03


def test_processes_read_disjoint_slices(paired_dir):
    seen = []
    for process in range(2):
        cfg = config(paired_dir, shuffle=False, global_batch_size=8)  # 4 per process
        batches = host_batches(cfg, 5, process_index=process, process_count=2)  # 20 = half of 40
        seen.append({int(e["tok_rgb@224"]["tensor"][0]) for e in examples_of(batches)})
    assert len(seen[0]) == len(seen[1]) == 20
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(40))


def test_config_from_config_dict(paired_dir):
    data = ml_collections.ConfigDict(dict(
        global_batch_size=8, seed=3, text_tokenizer=VOCAB, datasets=dict(paired=dict(
            path=paired_dir, masking=StandInMasker(PAIRED, PAIRED), crop="center"))))
    cfg = pipeline.PipelineConfig.from_config(data)
    assert cfg.seed == 3 and cfg.datasets[0].crop == "center" and cfg.datasets[0].name == "paired"
    data.datasets.paired.colour = "red"
    with pytest.raises(ValueError, match=r"data.datasets.paired: unknown field\(s\) \['colour'\]"):
        pipeline.PipelineConfig.from_config(data)


# ---------------------------------------------------------------------------------------------
# Bad input

def test_record_missing_a_needed_modality_names_file_record_and_field(tmp_path):
    features = {k: v for k, v in paired_features().items() if k != "det"}
    examples = [{k: v for k, v in paired_example(i).items() if k != "det"} for i in range(8)]
    directory = write(tmp_path, features, examples)
    with pytest.raises(DataError, match=r"field 'det': missing \(modality 'det' needs it") as info:
        next(iter(pipeline.host_dataset(config(directory))))
    assert info.value.file.startswith(directory) and info.value.index is not None


def test_wrong_dtype_names_file_record_and_field(tmp_path):
    examples = [dict(paired_example(i), **{name: paired_example(i)[name].astype(np.float32)
                                           for name in TOKENS}) for i in range(8)]
    directory = write(tmp_path, paired_features(np.float32), examples)
    with pytest.raises(DataError, match="expected an integer token array") as info:
        next(iter(pipeline.host_dataset(config(directory))))
    assert info.value.field in TOKENS and "test-train.array_record" in info.value.file


def empty_caption_every_fourth(i):
    example = paired_example(i)
    if i % 4 == 0:
        example["caption"] = [""] * N_CROPS
    return example


def test_empty_caption_is_an_error_or_a_counted_warning(tmp_path, caplog):
    directory = write(tmp_path, paired_features(), map(empty_caption_every_fourth, range(16)))
    with pytest.raises(DataError, match="field 'caption': .*the caption is empty") as info:
        host_batches(config(directory, shuffle=False), 1)
    assert info.value.index == 0
    with caplog.at_level(logging.WARNING, logger="fourm_jax.data.errors"):
        batches = host_batches(config(directory, shuffle=False, skip_bad_records=True), 3)
    for example in examples_of(batches):
        assert int(example["tok_rgb@224"]["tensor"][0]) % 4 != 0
    skipped = [r.getMessage() for r in caplog.records if "skipped bad record" in r.getMessage()]
    assert len(skipped) >= 6 and "#6 in dataset 'paired'" in skipped[5]
    assert "the caption is empty" in skipped[0] and "record 0" in skipped[0]


def test_disagreeing_crop_counts_are_an_error(tmp_path):
    examples = [dict(paired_example(i), crop_settings=np.array([[0, 0, 9, 9, 0]] * 2, np.int32))
                for i in range(4)]
    directory = write(tmp_path, paired_features(), examples)
    with pytest.raises(DataError, match="disagree on the number of crops"):
        host_batches(config(directory), 1)


def test_masker_errors_are_located(paired_dir):
    class Rejecting(StandInMasker):
        def mask_batch(self, examples, rng):
            raise ValueError("modality 'tok_depth@224': token id 9999 at index 3 is outside the "
                             "vocabulary [0, 8192)")

    cfg = pipeline.PipelineConfig(datasets=[pipeline.DatasetConfig(
        "paired", paired_dir, Rejecting(PAIRED, PAIRED))], global_batch_size=8, text_tokenizer=VOCAB)
    with pytest.raises(DataError, match="outside the vocabulary") as info:
        host_batches(cfg, 1)
    assert info.value.field == "tok_depth@224" and info.value.file.startswith(paired_dir)
    assert info.value.index is not None


def test_truncated_shard_fails_when_the_pipeline_is_built(tmp_path):
    directory = write(tmp_path, paired_features(), map(paired_example, range(32)))
    shard = sorted(p for p in tmp_path.glob("test-train.array_record-*"))[1]
    shard.write_bytes(shard.read_bytes()[:-200])
    with pytest.raises(DataError, match="truncated or corrupt") as info:
        pipeline.host_dataset(config(directory))
    assert info.value.file == str(shard)


MULTIHOST_WORKER = """
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
process, port, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=process)
assert len(jax.devices()) == 8  # starts the backend before tests.conftest sets XLA_FLAGS again
import numpy as np
from fourm_jax.data import pipeline
from fourm_jax import sharding as mesh_sharding
from tests.data.test_pipeline import PAIRED, VOCAB, StandInMasker
config = pipeline.PipelineConfig(
    datasets=[pipeline.DatasetConfig("paired", directory, StandInMasker(PAIRED, PAIRED))],
    global_batch_size=8, text_tokenizer=VOCAB, shuffle=False)
iterator = iter(pipeline.build_dataset(config, mesh_sharding.make_mesh(dict(data=8))))
batches = [next(iterator)["tok_rgb@224"]["tensor"] for _ in range(2)]
print(json.dumps(dict(shape=batches[0].shape, records=[
    [int(np.asarray(shard.data)[0, 0]) for shard in array.addressable_shards] for array in batches])),
    flush=True)
iterator.close()  # stop the prefetch threads before the distributed runtime goes away
jax.distributed.shutdown()
"""


def test_two_processes_feed_one_global_batch(paired_dir, repo_dir):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    env = dict(os.environ, PYTHONPATH=str(repo_dir))
    workers = [subprocess.Popen([sys.executable, "-c", MULTIHOST_WORKER, str(i), port, paired_dir],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                cwd=repo_dir) for i in range(2)]
    outputs = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=180)
        assert worker.returncode == 0, stderr[-3000:]
        outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    assert all(out["shape"] == [8, 196] for out in outputs)
    # unshuffled, process p reads records p, p + 2, ...: 4 per process and batch
    assert outputs[0]["records"] == [[0, 2, 4, 6], [8, 10, 12, 14]]
    assert outputs[1]["records"] == [[1, 3, 5, 7], [9, 11, 13, 15]]


# ---------------------------------------------------------------------------------------------
# With 4M's masking (fourm_jax.masking) and WordPiece formats (fourm_jax.text)

def unmask_sequence(masked) -> list[int]:
    """The ids span corruption started from (given untruncated targets)."""
    input_ids = masked["tensor"][~masked["input_mask"]]
    target_ids = masked["tensor"][~masked["target_mask"]]
    if len(input_ids):
        return text_formats.merge_spans(input_ids, target_ids)
    return [int(t) for t in target_ids[1:-1]]  # no input: the target is [S_1] ids [S_2]


def test_4m_masking_of_a_shared_crop_round_trips(paired_dir):
    # Untruncated targets, so the masked caption can be put back together exactly.
    masker = masking.Masker(masking.MaskingMixture.from_config(mixture_config(PAIRED)), 64, None)
    cfg = pipeline.PipelineConfig(datasets=[pipeline.DatasetConfig("paired", paired_dir, masker)],
                                  global_batch_size=8, text_tokenizer=VOCAB)
    crops = set()
    for example in examples_of(host_batches(cfg, 4)):
        rgb = example["tok_rgb@224"]
        record, crop = int(rgb["tensor"][0]), (int(rgb["tensor"][1]) - 1001) // 10
        crops.add(crop)
        merged = unmask_sequence(example["caption"])
        assert merged[-1] == layout.EOS_ID
        assert TOKENIZER.decode(merged[:-1]) == f"record {record} crop {crop}"
        inputs = sum(int((~m["input_mask"]).sum()) for m in example.values())
        assert 0 < inputs <= 64
        for name in TOKENS:
            used_twice = ~example[name]["input_mask"] & ~example[name]["target_mask"]
            assert not used_twice.any()
    assert len(crops) > 1


def test_4m_masking_batches_have_static_shapes_and_budgets(paired_dir):
    cfg = pipeline.PipelineConfig(datasets=[pipeline.DatasetConfig(
        "paired", paired_dir, mixture_config(PAIRED, 48, 40))], global_batch_size=8,
        text_tokenizer=VOCAB, modalities=(*PAIRED, "tok_normal@224"))
    batches = host_batches(cfg, 3)
    assert batches[0]["det"]["tensor"].shape == (8, 514)
    assert batches[0]["tok_normal@224"]["input_mask"].all()  # not in the dataset: a placeholder
    for example in examples_of(batches):
        assert sum(int((~m["input_mask"]).sum()) for m in example.values()) <= 48
        assert sum(int((~m["target_mask"]).sum()) for m in example.values()) <= 40


def test_token_id_outside_the_vocabulary_names_file_record_and_field(tmp_path):
    def bad(i):
        example = paired_example(i)
        if i == 5:
            example["tok_depth@224"][1, 7] = 9000  # tok_depth's vocabulary is 8192
        return example

    directory = write(tmp_path, paired_features(), map(bad, range(8)))
    dataset = pipeline.DatasetConfig("paired", directory, mixture_config(PAIRED), crop="center")
    # the bad id sits in crop 1: validation's centre crop never reads it
    host_batches(pipeline.PipelineConfig(datasets=[dataset], global_batch_size=8,
                                         text_tokenizer=VOCAB, shuffle=False), 1)
    dataset = pipeline.DatasetConfig("paired", directory, mixture_config(PAIRED))
    cfg = pipeline.PipelineConfig(datasets=[dataset], global_batch_size=8, text_tokenizer=VOCAB,
                                  shuffle=False)
    with pytest.raises(DataError, match="token id 9000 .* outside the vocabulary") as info:
        host_batches(cfg, 20)
    assert info.value.field == "tok_depth@224" and info.value.index == 5
    assert info.value.file.startswith(directory)


def test_rgb_pixels_follow_the_shared_crop(tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (40, 48, 3), np.uint8) for _ in range(8)]
    features = dict(paired_features(), rgb=records.image_feature(3))
    directory = write(tmp_path, features,
                      (dict(paired_example(i), rgb=images[i]) for i in range(8)))
    names = ("rgb@224", *PAIRED)
    cfg = pipeline.PipelineConfig(datasets=[pipeline.DatasetConfig(
        "paired", directory, mixture_config(names))], global_batch_size=4, text_tokenizer=VOCAB)
    batch = host_batches(cfg, 1)[0]
    assert batch["rgb@224"]["tensor"].shape == (4, 3, 224, 224)
    settings = paired_example(0)["crop_settings"]
    for example in examples_of([batch]):
        tokens = example["tok_rgb@224"]["tensor"]
        record, crop = int(tokens[0]), (int(tokens[1]) - 1001) // 10
        expected = transforms.rgb_pixels(images[record], settings[crop], 224, "rgb")
        np.testing.assert_allclose(example["rgb@224"]["tensor"], expected, atol=1e-6)


def test_pretokenized_caption_rows_follow_the_crop(tmp_path):
    def with_ids(i):
        example = paired_example(i)
        rows = [TOKENIZER.encode(text) for text in example["caption"]]
        ids = np.zeros((len(rows), max(map(len, rows)) + 2), np.int32)  # PAD-padded rows
        for r, row in enumerate(rows):
            ids[r, :len(row)] = row
        return dict(example, caption=ids)

    features = dict(paired_features(), caption=records.token_ids_feature(per_crop=True))
    directory = write(tmp_path, features, map(with_ids, range(8)))
    for example in examples_of(host_batches(config(directory), 2)):
        tokens = example["tok_rgb@224"]["tensor"]
        record, crop = int(tokens[0]), (int(tokens[1]) - 1001) // 10
        assert decode_text(example["caption"]["tensor"]) == f"record {record} crop {crop}"


def test_text_only_co_training_with_4m21_c4_masking(paired_dir, tmp_path, repo_dir):
    corpus = write(tmp_path, {"text": records.text_feature()},
                   ({"text": f"plain text number {i} for span corruption"} for i in range(16)))
    datasets = [pipeline.DatasetConfig("paired", paired_dir, mixture_config(PAIRED), weight=0.5),
                pipeline.DatasetConfig("c4", corpus, f"{repo_dir}/configs/mixtures/4m21.py:c4",
                                       fields={"caption": "text"}, weight=0.5)]
    cfg = pipeline.PipelineConfig(datasets=datasets, global_batch_size=8, text_tokenizer=VOCAB)
    text_only = 0
    for example in examples_of(host_batches(cfg, 4)):
        if example["tok_rgb@224"]["input_mask"].all() and example["det"]["input_mask"].all():
            text_only += 1
            text = TOKENIZER.decode(unmask_sequence(example["caption"])[:-1])  # without EOS
            assert re.fullmatch(r"plain text number \d+ for span corruption", text), text
    assert text_only == 16


@pytest.mark.parametrize("layout", ["ml4m_shards", "image_folder"])
def test_ml4m_layouts_feed_the_pipeline(tmp_path, layout):
    folders = [*ml4m_shards.TOKEN_MODALITIES, "crop_settings", "rgb", "caption", "det"]
    if layout == "ml4m_shards":
        ml4m_shards.write_ml4m_shards(tmp_path, folders, num_shards=2, per_shard=4)
    else:
        ml4m_shards.write_image_folders(tmp_path, folders, count=8)
    names = ("rgb@224", *ml4m_shards.TOKEN_MODALITIES, "caption", "det")
    dataset = pipeline.DatasetConfig("ml4m", str(tmp_path), StandInMasker(names, names),
                                     format=layout)
    cfg = pipeline.PipelineConfig(datasets=[dataset], global_batch_size=4, text_tokenizer=VOCAB)
    for example in examples_of(host_batches(cfg, 2)):
        record, crop = re.fullmatch(r"a photo number (\d+), crop (\d+)",
                                    decode_text(example["caption"]["tensor"])).groups()
        expected = ml4m_shards.expected_sample(int(record))
        for name in ml4m_shards.TOKEN_MODALITIES:
            np.testing.assert_array_equal(example[name]["tensor"], expected[name][int(crop)])
        pixels = transforms.rgb_pixels(expected["rgb"], expected["crop_settings"][int(crop)], 224,
                                       "rgb")
        np.testing.assert_allclose(example["rgb@224"]["tensor"], pixels, atol=1e-6)
