"""Text tokenizers: ml-4m's WordPiece ids, SentencePiece with the same layout, errors."""

import json
import sys

import numpy as np
import pytest

from fourm_jax.text import layout
from fourm_jax.text.tokenizer import FORMAT_KEYWORDS, load_tokenizer, reserved_tokens, train_sentencepiece


@pytest.mark.parametrize("text, ids", [
    # Reference §3.1 and §4.5: ordinary words, and common words that are class tokens (dog, couch).
    ("a dog on a couch", [4321, 4232, 4926, 4321, 4228]),
    # The format keywords are single ordinary tokens.
    (" ".join(FORMAT_KEYWORDS), [6304, 8620, 9292, 6631, 5585, 6712, 14445, 18109]),
    # Multi-word class names are one token, matched after lowercasing.
    ("A hot dog and a Teddy Bear", [4321, 4242, 4933, 4321, 4270]),
    # Value tokens and sentinels match as whole words of the raw text.
    ("v0=120 v3=949 [S_3]", [324, 4153, 7]),
    ("", []),
])
def test_wordpiece_known_encodings(wordpiece, text, ids):
    encoded = wordpiece.encode(text)
    assert encoded.dtype == np.int32 and encoded.tolist() == ids


def test_wordpiece_matches_the_masking_fixture_ids(wordpiece, repo_dir):
    """ml-4m's own ids for the fixture texts (recorded by ml-4m, not by this code)."""
    for path in sorted((repo_dir / "tests/fixtures/masking").glob("*/spec.json")):
        for entry in json.loads(path.read_text())["modalities"]:
            if isinstance(entry.get("text"), str):
                assert wordpiece.encode(entry["text"]).tolist() == entry["token_ids"], (path, entry["name"])


def test_encode_batch_and_cache(wordpiece_path):
    tokenizer = load_tokenizer(wordpiece_path, cache_size=2)
    texts = ["a dog", "two cats on a red couch", "a dog"]
    batch = tokenizer.encode_batch(texts)
    assert [ids.tolist() for ids in batch] == [tokenizer.encode(t).tolist() for t in texts]
    assert tokenizer.encode("a dog") is tokenizer.encode("a dog")  # cached
    tokenizer.encode("x")
    tokenizer.encode("y")
    assert "a dog" not in tokenizer._cache and len(tokenizer._cache) == 2
    with pytest.raises(TypeError, match=r"texts\[1\]: expected str"):
        tokenizer.encode_batch(["a", 3])


def test_decode_round_trip_and_bad_ids(wordpiece):
    assert wordpiece.decode(wordpiece.encode("A Café, on the road.")) == "a cafe, on the road."
    assert wordpiece.decode([4321, 4232, 5, 3, 204, 0]) == "a dog [S_1] [EOS] v0=0 [PAD]"
    assert wordpiece.decode([4321, -1, 30000, 4232]) == "a <-1?> <30000?> dog"


def test_sentencepiece_layout_and_round_trip(sentencepiece):
    assert sentencepiece.vocab_size > layout.FIRST_LEARNED_ID + len(FORMAT_KEYWORDS)
    for token_id, token in enumerate(layout.special_tokens() + list(FORMAT_KEYWORDS)):
        assert sentencepiece.token_to_id(token) == token_id
        assert sentencepiece.id_to_token(token_id) == token
    ids = sentencepiece.encode("A small red sphere on the left of a dog")
    assert ids.min() >= layout.FIRST_LEARNED_ID + len(FORMAT_KEYWORDS)  # reserved ids never come from text
    assert sentencepiece.decode(ids) == "a small red sphere on the left of a dog"
    assert sentencepiece.decode(np.r_[ids[:2], 5, 4232, 3]) == "a small [S_1] dog [EOS]"
    assert sentencepiece.token_to_id("no such piece") is None and sentencepiece.id_to_token(10**6) is None


def test_train_tokenizer_tool(corpus_file, tmp_path, capsys, repo_dir):
    sys.path.insert(0, str(repo_dir / "tools"))
    import train_text_tokenizer

    output = tmp_path / "nested" / "v.model"
    assert train_text_tokenizer.main(["--corpus", str(corpus_file), "--output", str(output),
                                      "--vocab-size", "4400"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["reserved"] == 4 + len(reserved_tokens()) == 4292
    assert load_tokenizer(output).vocab_size == summary["vocab_size"]
    assert [p.name for p in output.parent.iterdir()] == ["v.model"]  # no temporary files left


def test_bad_vocabularies_are_named(tmp_path, wordpiece_path, corpus_file):
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="unknown vocabulary type '.txt'"):
        load_tokenizer(tmp_path / "vocab.txt")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ValueError, match="broken.json: not a readable"):
        load_tokenizer(broken)
    # A vocabulary whose sentinels are shifted by one is not 4M's.
    spec = json.loads(wordpiece_path.read_text())
    for token in spec["added_tokens"]:
        if token["content"] == "[S_0]":
            token["content"] = "[S_X]"
    spec["model"]["vocab"]["[S_X]"] = spec["model"]["vocab"].pop("[S_0]")
    shifted = tmp_path / "shifted.json"
    shifted.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=r"shifted.json: token '\[S_0\]' has id None, 4M's layout needs 4"):
        load_tokenizer(shifted)
    with pytest.raises(ValueError, match="leaves no room"):
        train_sentencepiece([corpus_file], tmp_path / "v.model", vocab_size=4000)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty.txt does not exist or is empty"):
        train_sentencepiece([empty], tmp_path / "v.model", vocab_size=5000)
