"""4M's fixed token layout: the code, the asset table and ml-4m's vocabulary agree."""

import json

import pytest

from fourm_jax.text import layout
from fourm_jax.text.tokenizer import FORMAT_KEYWORDS


def test_layout_ids_follow_the_reference():
    tokens = layout.special_tokens()
    assert tokens[:4] == ["[PAD]", "[UNK]", "[SOS]", "[EOS]"]
    assert tokens[4] == "[S_0]" and tokens[203] == "[S_199]" and layout.sentinel_id(1) == 5
    assert tokens[204] == "v0=0" and tokens[4203] == "v3=999"
    assert layout.value_id(0, 120) == 324 and layout.value_id(3, 949) == 4153  # from ml-4m's det ids
    assert tokens[4204] == "airplane" and tokens[4283] == "zebra" and len(tokens) == layout.FIRST_LEARNED_ID
    assert tokens.index("hot dog") == 4242 and tokens.index("person") == 4253
    with pytest.raises(ValueError, match="v4=0"):
        layout.value_id(4, 0)
    with pytest.raises(ValueError, match="sentinel index 200"):
        layout.sentinel_id(200)


def test_asset_table_matches_the_layout(repo_dir):
    lines = (repo_dir / "tokenizers/text/special_tokens.tsv").read_text().splitlines()[1:]
    rows = [line.split("\t") for line in lines]
    expected = layout.special_tokens() + list(FORMAT_KEYWORDS)
    assert [(int(i), token) for i, token, _ in rows] == list(enumerate(expected))


def test_ml4m_vocabulary_has_the_layout(wordpiece_path):
    added = json.loads(wordpiece_path.read_text())["added_tokens"]
    assert [(t["id"], t["content"]) for t in added] == list(enumerate(layout.special_tokens()))
