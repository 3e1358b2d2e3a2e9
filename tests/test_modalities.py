import re

import pytest

from fourm_jax import modalities
from fourm_jax.modalities import Kind, Modality, PosEmb

KIND_OF_TYPE = {"img": (Kind.IMAGE_PIXELS, Kind.IMAGE_TOKENS), "seq": (Kind.SEQUENCE,),
                "seq_emb": (Kind.SEQUENCE_EMBEDDING,), "feature_map": (Kind.FEATURE_MAP,)}


def reference_rows(shared_dir):
    """Rows of the MODALITY_INFO table in ../shared/reference/ml4m-model.md, section 9."""
    text = (shared_dir / "reference" / "ml4m-model.md").read_text()
    section = text[text.index("## 9. MODALITY_INFO"):text.index("## 10.")]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 9 and cells[8].isdigit():
            rows.append(dict(zip(["name", "type", "enc", "dec", "vocab", "tokens", "size", "pos", "id"],
                                 cells, strict=True)))
    return rows, section


def test_reference_table_is_complete(shared_dir):
    """Every model modality except our own scenes group is one of ml-4m's, and vice versa."""
    rows, _ = reference_rows(shared_dir)
    assert len(rows) == 25
    model_modalities = {m.name for m in modalities.all_modalities() if m.encoder or m.decoder}
    assert set(modalities.MODALITIES_SCENES) <= model_modalities
    assert {r["name"] for r in rows} == model_modalities - set(modalities.MODALITIES_SCENES)
    assert not {r["name"] for r in rows} & set(modalities.MODALITIES_SCENES)


def test_every_model_modality_matches_reference(shared_dir):
    rows, _ = reference_rows(shared_dir)
    for row in rows:
        m = modalities.get(row["name"])
        assert m.id == int(row["id"]), row
        assert m.kind in KIND_OF_TYPE[row["type"]], row
        assert m.encoder == (row["enc"] != "None"), row
        assert m.decoder == (row["dec"] != "None"), row
        vocab = row["vocab"].replace("–", "")
        assert m.vocab_size == (int(vocab) if vocab else None), row
        numbers = [int(n) for n in re.findall(r"\d+", row["tokens"].replace("*", ""))]
        if m.is_sequence:
            # "max_length 263, max_tokens 275" or "256 / 256"; t5_caption's "77 / 77".
            if "max_length" in row["tokens"]:
                assert (m.max_length, m.max_tokens) == tuple(numbers[:2]), row
            else:
                assert (m.max_tokens, m.max_length) == tuple(numbers[:2]), row
        else:
            assert m.max_tokens == numbers[-1], row
        if row["size"] != "–":
            size, patch = (int(n) for n in re.findall(r"\d+", row["size"])[:2])
            assert (m.input_size, m.patch_size) == (size, patch), row
        expected_pos = PosEmb.LEARNED if "learned" in row["pos"] else (
            PosEmb.SINCOS_2D if "2-D" in row["pos"] else PosEmb.SINCOS_1D)
        assert m.pos_emb == expected_pos, row
        if m.kind is Kind.IMAGE_PIXELS:
            assert "IE(C=3)" in row["enc"] and m.num_channels == 3


def test_tokenizer_only_entries_match_reference(shared_dir):
    _, section = reference_rows(shared_dir)
    prose = section[section.index("Entries with no FourM embeddings"):]
    entries = re.findall(r"`([\w@.-]+)`\s+\(([^)]*?)(\d+)\)", prose)
    assert len(entries) == 11
    for name, details, id_ in entries:
        m = modalities.get(name)
        assert m.id == int(id_), name
        assert not m.encoder and not m.decoder, name
        channels = re.search(r"C=(\d+)", details) or re.match(r"(\d+),", details)
        assert channels, (name, details)
        assert m.num_channels == int(channels.group(1)), name


@pytest.mark.parametrize("name, vocab_size", [
    ("tok_rgb@64", 1024), ("tok_depth@64", 512), ("tok_normal@64", 512), ("tok_semseg@64", 256)])
def test_scenes_token_modalities(name, vocab_size):
    m = modalities.get(name)
    assert (m.kind, m.vocab_size, m.input_size, m.patch_size) == (Kind.IMAGE_TOKENS, vocab_size, 64, 8)
    assert m.max_tokens == 64 and m.grid_size == 8 and m.path == name and m.pretokenized
    assert m.encoder and m.decoder and m.pos_emb is PosEmb.SINCOS_2D
    assert m.id == modalities.modality_id(name)


def test_scenes_pixel_modality_reads_the_rgb_field():
    m = modalities.get("rgb@64")
    assert (m.kind, m.input_size, m.patch_size, m.num_channels) == (Kind.IMAGE_PIXELS, 64, 8, 3)
    assert m.path == "rgb" and m.max_tokens == 64 and m.encoder and not m.decoder


def test_id_is_sha256_mod_2_15():
    # Values as ml-4m's generate_uint15_hash produced them (reference table).
    assert modalities.modality_id("caption") == 32652
    assert modalities.modality_id("rgb@224") == 20716


def test_ids_are_unique():
    ids = [m.id for m in modalities.all_modalities()]
    assert len(ids) == len(set(ids))


def test_register_user_modality_one_call():
    m = modalities.register(Modality("tok_thermal@224", Kind.IMAGE_TOKENS, vocab_size=1024,
                                     patch_size=16))
    try:
        assert modalities.get("tok_thermal@224") is m
        assert m.max_tokens == 196 and m.input_size == 224 and m.pos_emb is PosEmb.SINCOS_2D
        assert m.id == modalities.modality_id("tok_thermal@224")
    finally:
        modalities._REGISTRY.pop("tok_thermal@224")


def test_duplicate_name_is_an_error():
    with pytest.raises(ValueError, match="'caption' is already registered"):
        modalities.register(Modality("caption", Kind.SEQUENCE, vocab_size=10, max_tokens=8))


def test_id_collision_names_both():
    with pytest.raises(ValueError, match=r"'my_caption'.*id 32652.*'caption'"):
        modalities.register(Modality("my_caption", Kind.SEQUENCE, vocab_size=10, max_tokens=8,
                                     id=32652))
    assert not modalities.is_registered("my_caption")


def test_unknown_modality_lists_known():
    with pytest.raises(KeyError, match="unknown modality 'tok_nope'.*caption"):
        modalities.get("tok_nope")


@pytest.mark.parametrize("kwargs, message", [
    (dict(kind=Kind.IMAGE_TOKENS, vocab_size=10, input_size=100, patch_size=16), "not divisible"),
    (dict(kind=Kind.IMAGE_TOKENS, patch_size=16), "needs vocab_size"),
    (dict(kind=Kind.SEQUENCE, vocab_size=10), "needs max_tokens"),
    (dict(kind=Kind.SEQUENCE, vocab_size=-3, max_tokens=4), "vocab_size must be a positive int"),
    (dict(kind=Kind.SEQUENCE, vocab_size=10, max_tokens=600), "exceeds 512"),
])
def test_invalid_modality(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Modality("bad", **kwargs)
