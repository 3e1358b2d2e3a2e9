import numpy as np
import pytest

from fourm_jax.generate import (
    custom_text,
    expand_to_batch,
    init_empty_target_modality,
    init_full_input_modality,
    merge_sequences,
)
from fourm_jax.text.tokenizer import load_tokenizer

S1, S2, S3, EOS, PAD = 5, 6, 7, 3, 0


def test_empty_targets():
    d = init_empty_target_modality({}, "tok_depth@224", 2, 196)["tok_depth@224"]
    assert d["tensor"].shape == (2, 196) and d["input_mask"].all() and not d["target_mask"].any()
    d = init_empty_target_modality({}, "caption", 2, 6)["caption"]
    np.testing.assert_array_equal(d["tensor"], [[S1, S1, 0, 0, 0, S2]] * 2)
    np.testing.assert_array_equal(d["input_mask"], [[False] + [True] * 5] * 2)  # the encoder sees "[S_1]"
    np.testing.assert_array_equal(d["target_mask"], ~d["input_mask"])
    with pytest.raises(ValueError, match="rgb@224.*cannot be generated"):
        init_empty_target_modality({}, "rgb@224", 1, 196)


def test_full_inputs_follow_ml4m():
    mod_dict = {"caption": {"tensor": np.array([[9, 10, EOS, 0, 0], [11, 12, 13, EOS, 0]])},
                "det": {"tensor": np.array([[9, 10, 11]])},
                "rgb@224": {"tensor": np.zeros((1, 3, 224, 224), np.float32)}}
    for domain in mod_dict:
        init_full_input_modality(mod_dict, domain)
    # Visible up to the first [EOS] found (row 0's column here), for every row: ml-4m's rule.
    np.testing.assert_array_equal(mod_dict["caption"]["input_mask"], [[False] * 3 + [True] * 2] * 2)
    assert mod_dict["caption"]["target_mask"].all()
    # No [EOS]: column 0 becomes [EOS] and is the only visible token.
    np.testing.assert_array_equal(mod_dict["det"]["tensor"], [[EOS, 10, 11]])
    np.testing.assert_array_equal(mod_dict["det"]["input_mask"], [[False, True, True]])
    assert mod_dict["rgb@224"]["input_mask"].shape == (1, 196) and not mod_dict["rgb@224"]["input_mask"].any()


def test_custom_text_and_batch(shared_dir):
    tokenizer = load_tokenizer(shared_dir / "vocab" / "text_tokenizer_4m_wordpiece_30k.json")
    d = custom_text({}, "a red cube [S_1]", "[EOS]", "caption", tokenizer, target_max_len=5)["caption"]
    given = tokenizer.encode("a red cube [S_1]").tolist()
    assert given[-1] == S1
    np.testing.assert_array_equal(d["tensor"], [given + [S1, PAD, PAD, PAD, EOS]])
    np.testing.assert_array_equal(d["input_mask"], [[False] * len(given) + [True] * 5])
    np.testing.assert_array_equal(d["target_mask"], ~d["input_mask"])
    mod_dict = expand_to_batch({"caption": d}, 3)
    assert mod_dict["caption"]["tensor"].shape == (3, len(given) + 5)
    with pytest.raises(ValueError, match="caption/tensor: batch size 3, expected 1 or 2"):
        expand_to_batch(mod_dict, 2)


def test_merge_fills_sentinels_with_generated_spans():
    a, b, c, d, e, f, g, h = range(5000, 5008)  # word pieces (ids 4..203 are all sentinels)
    given = {"tensor": np.array([[a, S1, b, S2, 0], [0, 0, 0, 0, 0]]),
             "input_mask": np.array([[False, False, False, False, True], [True] * 5])}
    generated = np.array([[S1, c, d, S2, e, EOS, f], [S1, g, EOS, S2, h, 0, 0]])
    merged = merge_sequences(given, generated)
    # Row 0: each sentinel takes its span (up to the next sentinel, so after [EOS] too, as ml-4m);
    # row 1 had no visible input: it counts as "[S_1]" and gets that span; rows are right-padded.
    np.testing.assert_array_equal(merged["tensor"], [[a, c, d, b, e, EOS, f],
                                                     [g, EOS, PAD, PAD, PAD, PAD, PAD]])
    np.testing.assert_array_equal(merged["input_mask"], [[False] * 7, [False] * 2 + [True] * 5])
    np.testing.assert_array_equal(merged["target_mask"], merged["input_mask"])  # ml-4m's quirk
    assert not merged["decoder_attention_mask"].any()
