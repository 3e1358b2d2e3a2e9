import numpy as np

from fourm_jax.model.example_batch import example_batch


def test_budgets_and_layout():
    inputs, outputs = ("rgb@224", "caption", "tok_depth@224"), ("caption", "tok_depth@224")
    batch = example_batch(inputs, outputs, 3, 40, 30, seed=0)
    assert set(batch) == set(inputs)
    assert batch["rgb@224"]["tensor"].shape == (3, 3, 224, 224)
    assert batch["caption"]["tensor"].shape == (3, 514)
    n_in = sum((~d["input_mask"]).sum(1) for d in batch.values())
    n_out = sum((~d["target_mask"]).sum(1) for d in batch.values())
    np.testing.assert_array_equal(n_in, 40)
    np.testing.assert_array_equal(n_out, 30)
    assert not np.any(~batch["rgb@224"]["target_mask"])  # no decoder for pixels
    for d in batch.values():
        assert not np.any(~d["input_mask"] & ~d["target_mask"])
    caption = batch["caption"]
    for b in range(3):
        targets = np.flatnonzero(~caption["target_mask"][b])
        assert np.all(np.diff(targets) == 1)  # one contiguous target run
        np.testing.assert_array_equal(caption["decoder_attention_mask"][b, targets], 1)
        depth = batch["tok_depth@224"]
        depth_targets = np.flatnonzero(~depth["target_mask"][b])
        assert depth["decoder_attention_mask"][b].sum() == len(depth_targets)


def test_text_tokens_caps_sequence_tokens():
    batch = example_batch(("caption", "tok_rgb@224"), ("caption",), 4, 30, 30, seed=1, text_tokens=10)
    caption = batch["caption"]
    per_sample = (~caption["input_mask"]).sum(1) + (~caption["target_mask"]).sum(1)
    assert np.all(per_sample <= 10) and np.all((~caption["target_mask"]).sum(1) <= 10)
