"""Sequence formats: ml-4m's serialisation (hand-derived cases and fixture ids), encode == tokenize(text),
round trips, fuzzed malformed decodes, bad input."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fourm_jax.text import formats, layout
from fourm_jax.text.formats import Box, Person, QueryPoint

RNG = np.random.default_rng


@pytest.fixture(scope="module")
def fmt(wordpiece):
    return formats.formats_for(wordpiece)


# ------------------------------------------------------------------------------------------------
# Hand-derived cases (reference §3.3)


def test_det_from_ml4m_annotation_matches_the_fixture(fmt, repo_dir):
    """The masking fixture records ml-4m's det string and ids for a raw annotation: score filter 0.6
    drops the car, boxes are ordered by xmin² + ymin², coordinates round(c * 999)."""
    spec = json.loads((repo_dir / "tests/fixtures/masking/mod7_rgb2all_all2all/spec.json").read_text())
    det = next(entry for entry in spec["modalities"] if entry["name"] == "det")
    boxes = fmt["det"].prepare(det["raw_annotation"])
    assert [b.class_name for b in boxes] == ["person", "horse"]
    assert fmt["det"].to_text(boxes) == det["text"]
    assert fmt["det"].encode(boxes).tolist() == det["token_ids"]


def test_det_crop_flip_and_rounding(fmt):
    det = fmt["det"]
    image = {"instances": [
        {"boxes": [0.5, 0.25, 0.75, 0.5], "class_name": "dog", "score": 0.9},
        {"boxes": [0.0, 0.0, 0.1, 0.1], "class_name": "cat", "score": 0.9},  # outside the crop: dropped
        {"boxes": [0.2, 0.2, 0.3, 0.3], "class_name": "cat", "score": 0.59}]}  # below the threshold
    # Crop (top 100, left 200, 200 x 200) of a 400 x 800 (H x W) image, flipped.
    boxes = det.prepare(image, crop=(100, 200, 200, 200, 1), orig_size=(400, 800))
    # x: (0.5 * 800 - 200) / 200 = 1.0, (0.75 * 800 - 200) / 200 = 2.0 -> clipped to 1.0: no width left.
    assert boxes == []
    boxes = det.prepare(image, crop=(0, 300, 400, 400, 1), orig_size=(400, 800))
    # x: (400 - 300) / 400 = 0.25, (600 - 300) / 400 = 0.75; flipped: 0.25, 0.75; y unchanged.
    assert boxes == [Box(0.25, 0.25, 0.75, 0.5, "dog", 0.9)]
    assert det.to_text(boxes) == "v0=250 v1=250 v2=749 v3=500 dog"  # 0.75 * 999 = 749.25, 0.5 -> 499.5 -> 500
    assert det.encode([]).tolist() == [] and det.to_text([]) == ""


def test_det_orders(wordpiece):
    boxes = [Box(0.5, 0.5, 0.6, 0.9, "a", 0.7), Box(0.1, 0.2, 0.9, 0.9, "b", 0.8),
             Box(0.3, 0.0, 0.4, 0.1, "c", 0.9)]
    by = lambda order: [b.class_name
                        for b in formats.Detection(wordpiece, order=order)._ordered(boxes, RNG(0))]
    assert by("dist_to_orig") == ["b", "c", "a"]
    assert by("area") == ["b", "a", "c"]
    assert by("score") == ["c", "b", "a"]
    assert sorted(by("random")) == ["a", "b", "c"]
    det = formats.Detection(wordpiece, max_instances=2)
    instances = [{"boxes": [b.xmin, b.ymin, b.xmax, b.ymax], "class_name": b.class_name, "score": b.score}
                 for b in boxes]
    assert [b.class_name for b in det.prepare(instances)] == ["b", "c"]  # best two scores, then ordered


def test_metadata_bins(fmt):
    md = fmt["metadata"]
    meta = {"original_width": 640, "colorfulness": 33.3, "watermark_score": 0.7, "aesthetic_score": 5.0,
            "brightness": 300.0, "n_humans": 1500, "occlusion_score": 0.1}
    # 640 // 32 = 20; int(33.3 / 150 * 49) = 10; 0.7 >= 0.5 -> 1; 4.5 <= 5.0 < 5.5 -> 1; 300 -> 255 ->
    # 49; 1500 -> 999; int(0.1 / 0.25 * 49) = 19.
    assert md.to_text(meta) == ["v1=0 v0=20", "v1=9 v0=10", "v1=19 v0=1", "v1=20 v0=1", "v1=10 v0=49",
                                "v1=5 v0=999", "v1=18 v0=19"]
    chunks = md.encode(meta)
    assert [c.tolist() for c in chunks] == [[1204, 224], [1213, 214], [1223, 205], [1224, 205], [1214, 253],
                                            [1209, 1203], [1222, 223]]
    shuffled = [c.tolist() for c in md.encode(meta, RNG(1))]
    assert sorted(shuffled) == sorted(c.tolist() for c in chunks) and shuffled != [c.tolist() for c in chunks]
    assert [c.tolist() for c in md.encode(meta, RNG(1))] == shuffled
    decoded = md.decode(np.concatenate(chunks))
    assert decoded.ok and decoded.value["original_width"] == 640 and decoded.value["n_humans"] == 999
    assert decoded.value["colorfulness"] == pytest.approx(10 * 150 / 49)
    assert decoded.value["watermark_score"] == 1


def test_metadata_float_values_keep_ml4m_strings(fmt, wordpiece):
    """A float image size stays a float in ml-4m ("v0=20.0"), which WordPiece splits; encode agrees."""
    md = fmt["metadata"]
    assert md.to_text({"original_width": 640.0}) == ["v1=0 v0=20.0"]
    assert md.encode({"original_width": 640.0})[0].tolist() == wordpiece.encode("v1=0 v0=20.0").tolist()


def test_color_palette_bankers_rounding_and_selection(fmt):
    palette = fmt["color_palette"]
    text = palette.to_text([(10, 20, 30), (127.5, 128.5, 255)])  # x.5 rounds to even
    assert text == "v1=2 v0=10 v0=20 v0=30 v0=128 v0=128 v0=255"
    assert palette.encode([(10, 20, 30)]).tolist() == [1205, 214, 224, 234]
    json_palettes = [{str(k): [[k, k, k]] * k for k in range(1, 8)}]
    sizes = {len(palette.select(json_palettes, RNG(seed))) for seed in range(60)}
    assert sizes == set(range(1, 8))
    assert palette.decode(palette.encode([(1, 2, 3), (4, 5, 6)])).value == [(1, 2, 3), (4, 5, 6)]


class FixedOrder:
    """An rng whose permutations are the identity (ml-4m's group order pose, global, camera, shape)."""

    def permutation(self, n):
        return np.arange(n)


def test_human_pose_serialisation(fmt, wordpiece):
    poses = fmt["human_poses"]
    person = Person(bbox=(0.1, 0.2, 0.5, 1.0), pose=(0, 511, 512, 1023, 1, 2, 3, 4),
                    global_orient=(1, 0, 0, 0, 1, 0, 0, 0, -1), betas=(0, 1, -1, 3, -3, 0.5, 0, 0, 0, 4),
                    camera=(0.9, 0.0, 25.0))
    text = poses.to_text([person], FixedOrder())
    # global: round(499.5 g + 499.5) (g = 0: 499.5 -> 500, half to even); shape: round(166.5 b + 499.5),
    # unclipped (b = 4: 1165.5 -> 1166);
    # camera: round(49.95 clip(c, -1, 19) + 49.95); pose codes >= 512 -> v1=c-512.
    assert text == ("human v0=100 v1=200 v2=500 v3=999 pose v0=0 v0=511 v1=0 v1=511 v0=1 v0=2 v0=3 v0=4 "
                    "global v0=999 v0=500 v0=500 v0=500 v0=999 v0=500 v0=500 v0=500 v0=0 "
                    "camera v0=95 v0=50 v0=999 "
                    "shape v0=500 v0=666 v0=333 v0=999 v0=0 v0=583 v0=500 v0=500 v0=500 v0=1166 ")
    ids = poses.encode([person], FixedOrder())
    assert ids.tolist() == wordpiece.encode(text).tolist()
    assert len(poses.encode([dataclass_replace(person, betas=(0,) * 10)], FixedOrder())) == 39
    decoded = poses.decode(ids)
    assert decoded.ok and decoded.value[0].pose == person.pose
    np.testing.assert_allclose(decoded.value[0].betas, person.betas, atol=0.5 / 166.5)
    assert poses.to_text([], RNG(0)) == "none" and poses.encode([], RNG(0)).tolist() == [18109]


def dataclass_replace(obj, **changes):
    import dataclasses
    return dataclasses.replace(obj, **changes)


def test_human_pose_preparation_crops_but_never_flips(fmt):
    hmr = {"bbox_xyxy": [[100, 50, 300, 250], [700, 50, 790, 90]],
           "pred_smpl_params": {"global_orient": np.eye(3)[None].repeat(2, 0).tolist(),
                                "betas": np.zeros((2, 10)).tolist()},
           "pose_tokenized": [[1] * 8, [2] * 8], "pred_cam": [[1, 0, 0], [1, 0, 0]]}
    people = fmt["human_poses"].prepare(hmr, crop=(0, 0, 400, 400, 1), orig_size=(400, 800))
    # Person 2 lies right of the 400 px crop (x > 1): dropped. Person 1: x / 400, y / 400, no flip.
    assert len(people) == 1 and people[0].bbox == (0.25, 0.125, 0.75, 0.625)
    assert fmt["human_poses"].prepare({}) == []


def test_sam_instance_queries(fmt, wordpiece):
    sam = fmt["sam_instance"]
    square = np.array([[[10, 10]], [[200, 10]], [[200, 200]], [[10, 200]]])
    entry = {"points": [[square]], "token_ids": [np.arange(16) * 60], "bbox": [np.array([10, 10, 200, 200])]}
    queries = sam.query(entry, RNG(3))
    assert 1 <= len(queries) <= 7 and all(0 <= q.x < 224 and 0 <= q.y < 224 for q in queries)
    for query in queries:
        inside = 10 <= query.x <= 200 and 10 <= query.y <= 200
        assert len(query.instances) == inside
    fixed = [QueryPoint(5, 7, ()), QueryPoint(100, 120, (((10, 20, 200, 210), tuple(range(500, 516))),))]
    text = sam.to_text(fixed)
    assert text.startswith("point v0=5 v1=7 none point v0=100 v1=120 polygon v0=10 v1=20 v2=200 v3=210 "
                           "v0=500 v0=501 ")
    assert text.endswith("v0=511 v1=0 v1=1 v1=2 v1=3")
    assert sam.encode(fixed).tolist() == wordpiece.encode(text).tolist()
    assert sam.decode(sam.encode(fixed)).value == fixed


@pytest.mark.parametrize("point, inside", [((5, 5), True), ((0, 3), True), ((10, 5), True), ((7, 5), True),
                                           ((10, 10), False), ((11, 5), False), ((7, 7), False),
                                           ((2, 8), True), ((-1, 0), False)])
def test_point_in_polygon_counts_edges_as_inside(point, inside):
    # An L-shaped (concave) polygon: the square [0,10]² without the square (5,10]².
    polygon = np.array([[0, 0], [10, 0], [10, 5], [5, 5], [5, 10], [0, 10]], np.float64)
    assert formats._point_in_polygon(*point, polygon) == inside


def test_caption_selection_and_decoding(fmt):
    caption = fmt["caption"]
    assert caption.select(["first", "second"], crop_index=1) == "second"
    assert caption.select([{"caption": "first"}]) == "first"
    assert caption.select(["a", "b", "c"], rng=RNG(0), aligned=False) in ("a", "b", "c")
    ids = caption.encode("A dog on a couch.")
    decoded = caption.decode(np.r_[ids, layout.EOS_ID, 4232, 0, 0])
    assert decoded.ok and decoded.value == "a dog on a couch."


def test_merge_spans_inverts_span_corruption():
    assert formats.merge_spans([4321, 5, 4321, 4228, 6], [5, 4232, 4926, 6, 3, 7]) == [4321, 4232, 4926, 4321,
                                                                                     4228, 3]


# ------------------------------------------------------------------------------------------------
# encode == tokenizer.encode(ml-4m's text), and round trips, on random data

COCO = st.sampled_from(layout.COCO_CLASSES)
OTHER_NAMES = st.sampled_from(["traffic cone", "wine glass holder", "Person", "HOT DOG", "shape", "shoe"])
UNIT = st.floats(0, 1, allow_nan=False)


@st.composite
def boxes(draw):
    out = []
    for _ in range(draw(st.integers(0, 6))):
        x0, x1 = sorted([draw(UNIT), draw(UNIT)])
        y0, y1 = sorted([draw(UNIT), draw(UNIT)])
        out.append(Box(x0, y0, x1, y1, draw(COCO | OTHER_NAMES)))
    return out


@st.composite
def metadata(draw):
    keys = draw(st.lists(st.sampled_from(list(formats.METADATA_KEYS)), unique=True, max_size=21))
    number = st.integers(-50, 50_000) | st.floats(-10, 1000, allow_nan=False)
    return {key: draw(number) for key in keys}


@st.composite
def people(draw):
    floats = lambda n, lo, hi: tuple(draw(st.lists(st.floats(lo, hi), min_size=n, max_size=n)))
    out = []
    for _ in range(draw(st.integers(0, 3))):
        x0, x1 = sorted(floats(2, 0, 1))
        y0, y1 = sorted(floats(2, 0, 1))
        codes = tuple(draw(st.lists(st.integers(0, 1023), min_size=8, max_size=8)))
        out.append(Person((x0, y0, x1, y1), codes, floats(9, -1, 1), floats(10, -5, 5), floats(3, -3, 30)))
    return out


@st.composite
def queries(draw):
    out = []
    for _ in range(draw(st.integers(0, 7))):
        instances = tuple((tuple(draw(st.lists(st.integers(0, 223), min_size=4, max_size=4))),
                           tuple(draw(st.lists(st.integers(0, 1023), min_size=16, max_size=16))))
                          for _ in range(draw(st.integers(0, 3))))
        out.append(QueryPoint(draw(st.integers(0, 223)), draw(st.integers(0, 223)), instances))
    return out


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(boxes())
def test_det_encode_matches_ml4m_tokenization_and_round_trips(fmt, wordpiece, data):
    det = fmt["det"]
    ids = det.encode(data)
    assert ids.tolist() == wordpiece.encode(det.to_text(data)).tolist()
    decoded = det.decode(ids)
    assert decoded.ok and len(decoded.value) == len(data)
    for box, back in zip(data, decoded.value, strict=True):
        np.testing.assert_allclose([back.xmin, back.ymin, back.xmax, back.ymax],
                                   [box.xmin, box.ymin, box.xmax, box.ymax], atol=0.5 / 999 + 1e-12)
        assert back.class_name == wordpiece.decode(wordpiece.encode(box.class_name))


@FAST
@given(metadata(), st.integers(0, 100))
def test_metadata_encode_matches_ml4m_tokenization(fmt, wordpiece, data, seed):
    md = fmt["metadata"]
    texts, chunks = md.to_text(data, RNG(seed)), md.encode(data, RNG(seed))
    assert [c.tolist() for c in chunks] == [wordpiece.encode(t).tolist() for t in texts]
    integral = {k: v for k, v in data.items() if isinstance(v, int)}
    decoded = md.decode(np.concatenate(md.encode(integral) or [np.zeros(0, np.int32)]))
    assert decoded.ok and set(decoded.value) == set(integral)


@FAST
@given(people(), st.integers(0, 100))
def test_human_poses_encode_matches_ml4m_tokenization_and_round_trips(fmt, wordpiece, data, seed):
    poses = fmt["human_poses"]
    ids = poses.encode(data, RNG(seed))
    assert ids.tolist() == wordpiece.encode(poses.to_text(data, RNG(seed))).tolist()
    decoded = poses.decode(ids)
    assert decoded.ok and len(decoded.value) == len(data)
    for person, back in zip(data, decoded.value, strict=True):
        assert back.pose == person.pose
        np.testing.assert_allclose(back.betas, person.betas, atol=0.5 / 166.5 + 1e-9)
        np.testing.assert_allclose(back.camera, np.clip(person.camera, -1, 19), atol=0.5 / 49.95 + 1e-9)


@FAST
@given(queries())
def test_sam_encode_matches_ml4m_tokenization_and_round_trips(fmt, wordpiece, data):
    sam = fmt["sam_instance"]
    ids = sam.encode(data)
    assert ids.tolist() == wordpiece.encode(sam.to_text(data)).tolist()
    assert sam.decode(ids).value == data


@FAST
@given(st.lists(st.tuples(*[st.integers(0, 255)] * 3), min_size=1, max_size=7))
def test_color_palette_round_trip(fmt, wordpiece, colors):
    palette = fmt["color_palette"]
    ids = palette.encode(colors)
    assert ids.tolist() == wordpiece.encode(palette.to_text(colors)).tolist()
    assert palette.decode(ids).value == colors


def test_formats_work_with_a_sentencepiece_vocabulary(sentencepiece):
    fmt = formats.formats_for(sentencepiece)
    data = {"det": [Box(100 / 999, 200 / 999, 300 / 999, 400 / 999, "dog")], "color_palette": [(1, 2, 3)],
            "sam_instance": [QueryPoint(5, 7, ())]}
    for name, value in data.items():
        assert fmt[name].decode(fmt[name].encode(value)).value == value
    person = Person((0.1, 0.2, 0.3, 0.4), (1,) * 8, (0.0,) * 9, (0.0,) * 10, (1.0, 0.0, 0.0))
    assert len(fmt["human_poses"].decode(fmt["human_poses"].encode([person], RNG(0))).value) == 1
    assert fmt["caption"].decode(fmt["caption"].encode("a red dog")).value == "a red dog"


# ------------------------------------------------------------------------------------------------
# Malformed generated sequences never raise


def _samples(fmt):
    person = Person((0.1, 0.2, 0.3, 0.4), tuple(range(8)), (0.0,) * 9, (0.0,) * 10, (1.0, 0.0, 0.0))
    return {"caption": fmt["caption"].encode("a dog on a couch"),
            "det": fmt["det"].encode([Box(0.1, 0.2, 0.3, 0.4, "dog"),
                                      Box(0.5, 0.5, 0.9, 0.9, "traffic cone")]),
            "metadata": np.concatenate(fmt["metadata"].encode({"original_width": 640, "n_humans": 3})),
            "color_palette": fmt["color_palette"].encode([(1, 2, 3), (4, 5, 6)]),
            "human_poses": fmt["human_poses"].encode([person, person], RNG(0)),
            "sam_instance": fmt["sam_instance"].encode([QueryPoint(5, 7, (((1, 2, 3, 4), tuple(range(16))),)),
                                                        QueryPoint(9, 9, ())])}


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(list(formats.FORMATS)), st.integers(0, 2**32 - 1))
def test_fuzzed_decodes_never_raise(fmt, name, seed):
    rng = RNG(seed)
    valid = _samples(fmt)[name]
    mutation = rng.integers(5)
    if mutation == 0:  # random ids, including special, sentinel and out-of-vocabulary ids
        ids = rng.integers(-5, 30_010, rng.integers(0, 60))
    elif mutation == 1:  # truncated
        ids = valid[:rng.integers(len(valid) + 1)]
    elif mutation == 2:  # shuffled
        ids = rng.permutation(valid)
    elif mutation == 3:  # a few tokens replaced by anything from the fixed layout
        ids = valid.copy()
        positions = rng.integers(0, len(ids), rng.integers(1, 4))
        ids[positions] = rng.integers(0, layout.FIRST_LEARNED_ID + 10, len(positions))
    else:  # two sequences glued, with EOS / PAD / sentinels in between
        ids = np.r_[valid[:rng.integers(len(valid) + 1)], rng.choice([0, 3, 5, 1, 2]), valid]
    decoded = fmt[name].decode(ids)
    assert isinstance(decoded, formats.Decoded) and isinstance(decoded.errors, list)
    assert all(isinstance(error, str) for error in decoded.errors)


def test_malformed_decodes_say_what_is_wrong(fmt):
    det = fmt["det"].decode([204, 1204, 2204, 4232, 3])  # a box without v3
    assert det.value == [] and any("incomplete" in error for error in det.errors)
    det = fmt["det"].decode(np.r_[fmt["det"].encode([Box(0.1, 0.2, 0.3, 0.4, "dog")]), 30_500, 5])
    assert len(det.value) == 1 and any("outside the vocabulary" in e for e in det.errors)
    assert any("sentinel [S_1]" in e for e in det.errors)
    palette = fmt["color_palette"].decode([1205, 214, 224])  # declares one colour, holds two values
    assert palette.value == [] and palette.errors
    assert fmt["human_poses"].decode([]).errors and fmt["metadata"].decode([1204]).errors
    assert fmt["caption"].decode(np.array([1.5, 2.5])).errors == ["ids must be integers, got dtype float64"]


# ------------------------------------------------------------------------------------------------
# Bad structured input


def test_bad_structured_input_is_named(fmt, wordpiece):
    with pytest.raises(ValueError, match="caption: text: the caption is empty"):
        fmt["caption"].encode("   ")
    with pytest.raises(ValueError, match=r"det: boxes\[1\]: coordinates must lie in \[0, 1\]"):
        fmt["det"].encode([Box(0, 0, 1, 1, "dog"), Box(0, 0, 1.5, 1, "dog")])
    with pytest.raises(ValueError, match=r"det: boxes\[0\].class_name"):
        fmt["det"].encode([Box(0, 0, 1, 1, "")])
    with pytest.raises(ValueError, match="metadata: size: unknown metadata key"):
        fmt["metadata"].encode({"size": 3})
    with pytest.raises(ValueError, match="metadata: entropy: expected a finite number"):
        fmt["metadata"].encode({"entropy": float("nan")})
    with pytest.raises(ValueError, match=r"color_palette: colors\[0\]: expected \(r, g, b\)"):
        fmt["color_palette"].encode([(1, 2)])
    with pytest.raises(ValueError, match=r"human_poses: people\[0\].pose: pose codes"):
        fmt["human_poses"].encode([Person((0, 0, 1, 1), (1024,) * 8, (0,) * 9, (0,) * 10, (0,) * 3)], RNG(0))
    with pytest.raises(ValueError, match="human_poses: expected HMR2 fields"):
        fmt["human_poses"].prepare({"bbox_xyxy": [[0, 0, 1, 1]]})
    with pytest.raises(ValueError, match="det: cropping boxes needs orig_size"):
        fmt["det"].prepare({"instances": []}, crop=(0, 0, 1, 1))
    with pytest.raises(ValueError, match=r"det: instances\[0\]"):
        fmt["det"].prepare([{"boxes": [0, 0, 1], "class_name": "dog", "score": 1.0}])


def test_warn_mode_skips_and_counts(wordpiece, caplog):
    metadata = formats.Metadata(wordpiece, on_error="warn")
    chunks = metadata.encode({"size": 3, "n_humans": 2, "colour": 1})
    chunks += metadata.encode({"size": 4})
    assert [c.tolist() for c in chunks] == [[1209, 206]]
    assert metadata.skipped == {"size": 2, "colour": 1}
    assert sum("size" in record.message for record in caplog.records) == 1  # logged once, then counted
    caption = formats.Caption(wordpiece, on_error="warn")
    assert caption.encode("").tolist() == [] and caption.skipped == {"text": 1}
