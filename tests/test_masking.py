"""Masking: invariants on every draw, hand-derived cases, bad input, and ml-4m's distributions.

The distribution test runs on every fixture directory (spec.json + samples.npz) under
tests/fixtures/masking/, or under $FOURM_MASKING_FIXTURES when that names a directory.
"""

import json
import os
import pathlib

import numpy as np
import pytest
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fourm_jax import configs, masking
from fourm_jax.masking import Masker, MaskingMixture
from fourm_jax.modalities import Kind, Modality
from fourm_jax.text.layout import EOS_ID, FIRST_SENTINEL_ID, NUM_SENTINELS, SENTINEL_OFFSET

FIXTURES_DIR = pathlib.Path(__file__).parent / "fixtures" / "masking"
# Two-sample tests of our draws against ml-4m's: a statistic fails when p < P_THRESHOLD (the
# threshold the fixture READMEs suggest; ml-4m against itself with another seed passes it).
P_THRESHOLD = 1e-4
NUM_DRAWS = 10_000
MIN_EXPECTED = 5  # chi-square bins are merged until every expected count is at least this


def is_sentinel(ids):
    return (ids >= SENTINEL_OFFSET) & (ids < SENTINEL_OFFSET + NUM_SENTINELS)


# ------------------------------------------------------------------------------------------------
# Drawing many examples and checking every invariant on every draw


def draw(masker, example, num_draws, seed, batch_size=1):
    """Stacked outputs {name: {key: [N, ...]}} and stats {key: [N]} of `num_draws` draws, one at a
    time (batch_size 1: masker(example, rng)) or with mask_batch. Pixel tensors are replaced by
    whether they equal the input (stacking them all would take gigabytes)."""
    rng = np.random.default_rng(seed)
    pixels = [name for name, spec in masker.specs.items() if spec.kind is Kind.IMAGE_PIXELS]
    outputs, stats = [], []
    for start in range(0, num_draws, batch_size):
        record = {}
        if batch_size == 1:
            out = {name: {key: value[None] for key, value in arrays.items()}
                   for name, arrays in masker(example, rng, record).items()}
            record = {key: [value] for key, value in record.items()}
        else:
            out = masker.mask_batch([example] * min(batch_size, num_draws - start), rng, record)
        for name in pixels:
            tensor = out[name]["tensor"]
            same = (tensor == np.asarray(masking._lookup(example, name))).reshape(len(tensor), -1).all(axis=1)
            out[name] = dict(out[name], tensor=same)
        outputs.append(out)
        stats.append(record)
    stacked = {name: {key: np.concatenate([o[name][key] for o in outputs]) for key in outputs[0][name]}
               for name in outputs[0]}
    return stacked, {key: np.array([v for s in stats for v in s[key]]) for key in stats[0]}


def masked_ids(example_value, spec: Modality):
    """What the masking span-masks: ids + EOS cut to max_tokens (chunks: whole chunks that fit)."""
    if len(example_value) and np.ndim(example_value[0]) == 1:
        chunks, total = [], 0
        for chunk in list(example_value) + [[EOS_ID]]:
            total += len(chunk)
            if total > spec.max_tokens:
                break
            chunks.append(list(chunk))
        return chunks
    return (list(example_value) + [EOS_ID])[:spec.max_tokens]


def check_invariants(masker, example, out, stats):
    """Asserts every layout and budget invariant on every one of the N stacked draws."""
    n = len(stats["dir_idx"])
    num_input, num_target = stats["num_input_tokens"], stats["num_target_tokens"]
    has_targets = num_target[0] is not None
    spec_shapes = masker.output_spec()
    sum_in_budget = np.zeros(n, np.int64)
    sum_tg_budget = np.zeros(n, np.int64)
    sum_inputs = np.zeros(n, np.int64)
    sum_targets = np.zeros(n, np.int64)
    for name, spec in masker.specs.items():
        arrays = out[name]
        for key, (shape, dtype) in spec_shapes[name].items():
            if not (spec.kind is Kind.IMAGE_PIXELS and key == "tensor" and name in masker.mixture.modalities):
                assert arrays[key].shape == (n, *shape) and arrays[key].dtype == dtype, (name, key)
        input_used, target_used = ~arrays["input_mask"], ~arrays["target_mask"]
        n_input, n_target = input_used.sum(1), target_used.sum(1)
        if name not in masker.mixture.modalities:  # a placeholder
            assert not input_used.any() and not target_used.any(), name
            assert not arrays["tensor"].any() and not arrays["decoder_attention_mask"].any(), name
            continue
        in_budget = stats[f"{name}/in_budget"]
        tg_budget = stats[f"{name}/tg_budget"].astype(np.int64) if has_targets else None
        sum_in_budget += in_budget
        sum_inputs += n_input
        if has_targets:
            sum_tg_budget += tg_budget
            sum_targets += n_target
        assert (in_budget <= spec.max_tokens).all(), name
        if spec.is_image:
            check_image(name, spec, example, arrays, n_input, n_target, in_budget, tg_budget)
        elif spec.kind is Kind.SEQUENCE:
            check_sequence(name, spec, example, arrays, stats, n_input, n_target, in_budget, tg_budget)
        else:
            check_sequence_embedding(name, spec, example, arrays, n_input, in_budget)
    assert (sum_in_budget <= num_input).all() and (sum_inputs <= num_input).all()
    if has_targets:
        assert (sum_tg_budget <= num_target).all() and (sum_targets <= num_target).all()


def check_image(name, spec, example, arrays, n_input, n_target, in_budget, tg_budget):
    input_used, target_used = ~arrays["input_mask"], ~arrays["target_mask"]
    assert not (input_used & target_used).any(), f"{name}: a token is both input and target"
    assert (n_input == in_budget).all(), name
    if tg_budget is not None:
        assert (n_target == tg_budget).all(), name
        assert (in_budget + tg_budget <= spec.max_tokens).all(), name
    else:
        assert (n_target == spec.max_tokens - n_input).all(), name
    expected = np.zeros_like(arrays["decoder_attention_mask"])
    expected[np.arange(len(n_target)), np.argmax(target_used, axis=1)] = n_target
    np.testing.assert_array_equal(arrays["decoder_attention_mask"], expected, err_msg=name)
    if spec.kind is Kind.IMAGE_PIXELS:
        assert arrays["tensor"].all(), f"{name}: pixels not passed through"
    else:
        value = np.asarray(masking._lookup(example, name))
        assert (arrays["tensor"] == value[None]).all(), f"{name}: tensor not passed through"


def check_sequence(name, spec, example, arrays, stats, n_input, n_target, in_budget, tg_budget):
    tensor = arrays["tensor"]
    length = tensor.shape[1]
    position = np.arange(length)[None]
    input_block = position < n_input[:, None]
    target_block = (position >= in_budget[:, None]) & (position < (in_budget + n_target)[:, None])
    np.testing.assert_array_equal(~arrays["input_mask"], input_block, err_msg=f"{name}: input block")
    np.testing.assert_array_equal(~arrays["target_mask"], target_block, err_msg=f"{name}: target block")
    np.testing.assert_array_equal(arrays["decoder_attention_mask"], target_block.astype(np.int32),
                                  err_msg=f"{name}: decoder_attention_mask")
    assert (tensor[~(input_block | target_block)] == 0).all(), f"{name}: PAD outside the blocks"
    assert (tensor[input_block | target_block] != 0).all(), f"{name}: PAD inside a block"
    assert (n_input <= in_budget).all() and (n_input[in_budget == 0] == 0).all(), name
    full_target_len = stats[f"{name}/full_target_len"]
    if tg_budget is not None:
        assert (n_target <= tg_budget).all(), name
        complete = full_target_len <= tg_budget
        assert (n_target[complete] == full_target_len[complete]).all(), f"{name}: target truncated"
    else:
        complete = np.ones(len(n_target), bool)
    original = masked_ids(masking._lookup(example, name), spec)
    chunked = original and isinstance(original[0], list)
    flat = [t for chunk in original for t in chunk] if chunked else original
    for r in range(len(tensor)):
        inputs = tensor[r, :n_input[r]]
        targets = tensor[r, in_budget[r]:in_budget[r] + n_target[r]]
        input_sentinels = inputs[is_sentinel(inputs)]
        np.testing.assert_array_equal(input_sentinels, FIRST_SENTINEL_ID + np.arange(len(input_sentinels)),
                                      err_msg=f"{name}: input sentinels out of order")
        if len(targets):
            assert is_sentinel(targets[0]), f"{name}: target does not start with a sentinel"
        if complete[r] and in_budget[r] == 0:  # no input: the whole sequence is one target span
            expected = [FIRST_SENTINEL_ID, *flat, FIRST_SENTINEL_ID + 1] if flat else [FIRST_SENTINEL_ID]
            assert targets.tolist() == expected, name
        elif complete[r]:
            assert len(input_sentinels) + 1 == is_sentinel(targets).sum(), name
            assert _fill_spans(inputs.tolist(), targets.tolist()) == flat, f"{name}: spans do not rebuild"


def _fill_spans(inputs, targets):
    """Undoes span corruption: each input sentinel is replaced by the target tokens that follow it."""
    spans, current = {}, None
    for token in targets:
        if is_sentinel(token):
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    out = []
    for token in inputs:
        out.extend(spans[token] if is_sentinel(token) else [token])
    return out


def check_sequence_embedding(name, spec, example, arrays, n_input, in_budget):
    assert (n_input <= in_budget).all(), name
    assert arrays["target_mask"].all() and not arrays["decoder_attention_mask"].any(), name
    emb = np.asarray(masking._lookup(example, name))[:spec.max_tokens]
    tensor = arrays["tensor"]
    for r in range(len(tensor)):
        rows = tensor[r, :n_input[r]]
        assert not tensor[r, n_input[r]:].any(), name
        # Kept rows appear in order; zero rows stand for sentinels, never two in a row.
        kept = [i for i, row in enumerate(rows) if row.any()]
        matches = [int(np.flatnonzero((emb == rows[i]).all(1))[0]) for i in kept]
        assert matches == sorted(set(matches)), name
        zero = ~rows.any(1)
        assert not (zero[1:] & zero[:-1]).any(), name


# ------------------------------------------------------------------------------------------------
# Fixtures from ml-4m: spec.json + samples.npz


def fixture_dirs():
    root = os.environ.get("FOURM_MASKING_FIXTURES")
    base = pathlib.Path(root) if root and pathlib.Path(root).is_dir() else FIXTURES_DIR
    if (base / "spec.json").is_file():
        return [base]
    return sorted(p for p in base.iterdir() if (p / "spec.json").is_file())


def modality_from_spec(entry, samples):
    name, kind, max_tokens = entry["name"], entry["type"], entry["max_tokens"]
    if kind == "img":
        image = dict(max_tokens=max_tokens, input_size=entry.get("input_size", 224),
                     patch_size=entry.get("patch_size", 16))
        if f"data/{name}" in samples or entry.get("vocab_size") is not None:
            return Modality(name, Kind.IMAGE_TOKENS, vocab_size=entry["vocab_size"], **image)
        return Modality(name, Kind.IMAGE_PIXELS, num_channels=entry.get("num_channels", 3), **image)
    if kind == "seq":
        return Modality(name, Kind.SEQUENCE, vocab_size=entry.get("vocab_size") or 30_000,
                        max_tokens=max_tokens)
    if kind == "seq_emb":
        if f"data/{name}" not in samples:
            pytest.fail(f"fixture modality {name!r} (seq_emb) has no data/{name} array in samples.npz")
        return Modality(name, Kind.SEQUENCE_EMBEDDING, max_tokens=max_tokens,
                        embedding_dim=int(samples[f"data/{name}"].shape[-1]))
    pytest.fail(f"fixture modality {name!r}: unsupported type {kind!r}")


def load_fixture(path):
    spec = json.loads((path / "spec.json").read_text())
    samples = dict(np.load(path / "samples.npz"))
    entries = {entry["name"]: entry for entry in spec["modalities"]}
    order = spec.get("modality_order") or list(entries)
    modalities = {name: modality_from_spec(entries[name], samples) for name in order}
    num_components = len(entries[order[0]]["input_alphas"])
    mixture = MaskingMixture(
        modalities=tuple(order),
        input_alphas=np.array([entries[name]["input_alphas"] for name in order]).T,
        target_alphas=np.array([entries[name]["target_alphas"] for name in order]).T,
        keep=tuple(zip(*[entries[name].get("keep") or ["random"] * num_components for name in order],
                       strict=True)),
        weights=spec.get("sampling_weights"))
    masker = Masker(mixture, tuple(spec["input_tokens_range"]), tuple(spec["target_tokens_range"]),
                    modalities=modalities)
    example = {}
    for name, modality in modalities.items():
        if modality.kind is Kind.IMAGE_PIXELS:
            example[name] = np.zeros((modality.num_channels, modality.input_size, modality.input_size),
                                     np.float32)
        elif modality.kind is Kind.SEQUENCE:
            example[name] = entries[name]["token_ids"]
        else:
            example[name] = samples[f"data/{name}"]
    return spec, samples, masker, example


def statistics(masker, out, stats):
    """The fixture's per-draw statistics, computed from our outputs and draw internals."""
    result = {key: value for key, value in stats.items() if value.dtype != object}
    for name in masker.mixture.modalities:
        arrays = out[name]
        n_input, n_target = (~arrays["input_mask"]).sum(1), (~arrays["target_mask"]).sum(1)
        result[f"{name}/n_input"], result[f"{name}/n_target"] = n_input, n_target
        if masker.specs[name].kind is not Kind.SEQUENCE:
            continue
        in_budget, tensor = stats[f"{name}/in_budget"], arrays["tensor"]
        rows = range(len(tensor))
        inputs = [tensor[r, :n_input[r]] for r in rows]
        targets = [tensor[r, in_budget[r]:in_budget[r] + n_target[r]] for r in rows]
        result[f"{name}/input_len"] = np.array([(x != 0).sum() for x in inputs])
        result[f"{name}/target_len"] = np.array([(x != 0).sum() for x in targets])
        result[f"{name}/n_input_sentinels"] = np.array([is_sentinel(x).sum() for x in inputs])
        result[f"{name}/n_target_sentinels"] = np.array([is_sentinel(x).sum() for x in targets])
        result[f"{name}/target_start"] = np.where(n_target > 0, in_budget, -1)
        result[f"{name}/target_first_sentinel"] = np.array(
            [x[0] - SENTINEL_OFFSET if len(x) and is_sentinel(x[0]) else -1 for x in targets])
        result[f"{name}/target_last_is_sentinel"] = np.array(
            [int(len(x) > 0 and bool(is_sentinel(x[-1]))) for x in targets])
    return result


def chi2_two_sample(a, b):
    """p-value of a chi-square test that integer samples a and b share a distribution, with adjacent
    values merged into bins until every expected count is >= MIN_EXPECTED."""
    values = np.union1d(a, b)
    counts = np.stack([np.bincount(np.searchsorted(values, x), minlength=len(values)) for x in (a, b)])
    needed = MIN_EXPECTED * (len(a) + len(b)) / min(len(a), len(b))
    bins, current = [], np.zeros(2)
    for column in counts.T:
        current = current + column
        if current.sum() >= needed:
            bins.append(current)
            current = np.zeros(2)
    if current.sum() and bins:
        bins[-1] = bins[-1] + current
    if len(bins) < 2:
        return 1.0
    return scipy.stats.chi2_contingency(np.stack(bins, axis=1), correction=False).pvalue


def compare_distributions(ours, reference):
    """{statistic: p-value} for every statistic in the reference, overall and per component."""
    pvalues = {}
    components = np.unique(reference["dir_idx"])
    for key, ref in reference.items():
        if key.startswith(("full/", "data/")):
            continue
        if key not in ours:
            pytest.fail(f"fixture statistic {key!r} is not produced by this test; extend statistics()")
        mine = ours[key]
        if ref.dtype.kind == "f":
            pvalues[key] = scipy.stats.ks_2samp(mine, ref).pvalue
            continue
        pvalues[key] = chi2_two_sample(mine.astype(np.int64), ref.astype(np.int64))
        if key == "dir_idx" or len(components) < 2:
            continue
        for c in components:
            sub_mine, sub_ref = mine[ours["dir_idx"] == c], ref[reference["dir_idx"] == c]
            if min(len(sub_mine), len(sub_ref)) >= 100:
                pvalues[f"{key} | dir_idx={c}"] = chi2_two_sample(sub_mine.astype(np.int64),
                                                                  sub_ref.astype(np.int64))
    return pvalues


@pytest.fixture(scope="module", params=fixture_dirs(), ids=lambda p: p.name)
def fixture_draws(request):
    spec, samples, masker, example = load_fixture(request.param)
    out, stats = draw(masker, example, NUM_DRAWS, seed=1234, batch_size=50)
    return spec, samples, masker, example, out, stats


def test_fixture_sequences_prepared_like_ml4m(fixture_draws):
    spec, _, masker, example, _, _ = fixture_draws
    for entry in spec["modalities"]:
        if entry["type"] == "seq":
            assert masked_ids(example[entry["name"]], masker.specs[entry["name"]]) == entry["masking_ids"]
            elements, _ = masker._sequence_elements(masker.specs[entry["name"]], example[entry["name"]], 0)
            assert elements == [[t] for t in entry["masking_ids"]] or elements == entry["masking_ids"]


def test_fixture_invariants_on_every_draw(fixture_draws):
    _, _, masker, example, out, stats = fixture_draws
    check_invariants(masker, example, out, stats)


def test_fixture_one_example_at_a_time(fixture_draws):
    """masker(example, rng) (the batch-of-one path) keeps the invariants and ml-4m's distributions."""
    _, samples, masker, example, _, _ = fixture_draws
    out, stats = draw(masker, example, 2000, seed=7, batch_size=1)
    check_invariants(masker, example, out, stats)
    pvalues = compare_distributions(statistics(masker, out, stats), dict(samples))
    failed = {key: p for key, p in pvalues.items() if p < P_THRESHOLD}
    assert not failed, f"distributions differ from ml-4m's (p < {P_THRESHOLD}): {failed}"


def test_invariant_checker_accepts_ml4m_outputs(fixture_draws):
    """The checker's layout conventions are ml-4m's: its own full outputs pass them."""
    _, samples, masker, example, _, _ = fixture_draws
    index = samples["full/draw_index"]
    out = {name: {key: samples[f"full/{name}/{key}"] for key in ("input_mask", "target_mask",
                                                                 "decoder_attention_mask")}
           for name in masker.specs}
    for name, spec in masker.specs.items():
        if spec.kind is Kind.IMAGE_PIXELS:  # ml-4m stores no pixels; it passes them through
            out[name]["tensor"] = np.ones(len(index), bool)
        else:  # ml-4m's grids are int64; compare the layout in our dtypes
            dtype = masker.output_spec()[name]["tensor"][1]
            out[name]["tensor"] = samples[f"full/{name}/tensor"].astype(dtype)
    stats = {key: samples[key][index] for key in samples if not key.startswith(("full/", "data/"))}
    check_invariants(masker, example, out, stats)


def test_fixture_distributions_match_ml4m(fixture_draws):
    _, samples, masker, _, out, stats = fixture_draws
    reference = {key: samples[key] for key in samples}
    pvalues = compare_distributions(statistics(masker, out, stats), reference)
    failed = {key: p for key, p in pvalues.items() if p < P_THRESHOLD}
    assert not failed, f"distributions differ from ml-4m's (p < {P_THRESHOLD}): {failed}"
    assert len(pvalues) >= 10


def test_distribution_test_detects_a_wrong_decay(fixture_draws, monkeypatch):
    """The two-sample test has power: ml-4m's span masking with keep-probability decay 0.8 instead of
    0.9 (one of the deliberate bugs the fixtures were validated against) fails it."""
    spec, samples, masker, example, _, _ = fixture_draws
    if not any(entry["type"] == "seq" for entry in spec["modalities"]):
        pytest.skip("fixture has no sequence modality")
    monkeypatch.setattr(masking, "KEEP_PROB_DECAY", 0.8)
    monkeypatch.setattr(masking, "_DECAY_POWERS", 0.8 ** np.arange(len(masking._DECAY_POWERS)))
    out, stats = draw(masker, example, NUM_DRAWS // 2, seed=99, batch_size=50)
    pvalues = compare_distributions(statistics(masker, out, stats), dict(samples))
    assert min(pvalues.values()) < P_THRESHOLD


def test_distribution_test_detects_leftover_to_the_same_draw(fixture_draws, monkeypatch):
    """Another deliberate bug the fixtures were validated against: the leftover tokens go to the
    argmax of the same Dirichlet draw instead of fresh draws."""
    _, samples, masker, example, _, _ = fixture_draws

    def same_draw_budgets(self, rng, counts):
        gammas = self.gammas(rng, len(counts))
        p = gammas / gammas.sum(axis=2, keepdims=True)
        budgets = np.floor(p * counts[:, :, None]).astype(np.int64)
        leftover = counts - budgets.sum(axis=2)
        rows, halves = np.indices(leftover.shape)
        budgets[rows, halves, p.argmax(axis=2)] += leftover
        return budgets

    monkeypatch.setattr(masking._Dirichlets, "budgets", same_draw_budgets)
    out, stats = draw(masker, example, NUM_DRAWS // 2, seed=99, batch_size=50)
    pvalues = compare_distributions(statistics(masker, out, stats), dict(samples))
    assert min(pvalues.values()) < P_THRESHOLD


# ------------------------------------------------------------------------------------------------
# Invariants on random mixtures, modalities and sequences (hypothesis)

ALPHAS = st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0, 5.0, 1000.0])


@st.composite
def masking_setups(draw_):
    """A random set of modalities, a mixture over them, token ranges and one example."""
    specs, example = {}, {}
    rng = np.random.default_rng(draw_(st.integers(0, 2**32 - 1)))
    for i in range(draw_(st.integers(0, 3))):
        size = draw_(st.sampled_from([1, 4, 16, 49]))
        vocab = draw_(st.integers(1, 50))
        specs[f"tok_{i}"] = Modality(f"tok_{i}", Kind.IMAGE_TOKENS, vocab_size=vocab, max_tokens=size,
                                     patch_size=16)
        dtype = draw_(st.sampled_from([np.int16, np.int64]))
        example[f"tok_{i}"] = rng.integers(0, vocab, size).astype(dtype)
    if draw_(st.booleans()):
        specs["pix"] = Modality("pix", Kind.IMAGE_PIXELS, num_channels=3, input_size=16, patch_size=4)
        example["pix"] = rng.random((3, 16, 16)).astype(np.float32)
    for i in range(draw_(st.integers(0, 2))):
        max_tokens = draw_(st.integers(1, 40))
        specs[f"seq_{i}"] = Modality(f"seq_{i}", Kind.SEQUENCE, vocab_size=300, max_tokens=max_tokens)
        length = draw_(st.integers(0, 50))
        ids = rng.integers(210, 300, length)
        if draw_(st.booleans()):  # chunks, as metadata
            cuts = np.sort(rng.choice(np.arange(1, max(length, 1)), size=min(length // 2, max(length - 1, 0)),
                                      replace=False)) if length > 1 else []
            example[f"seq_{i}"] = [chunk.tolist() for chunk in np.split(ids, cuts) if len(chunk)]
        else:
            example[f"seq_{i}"] = ids
    if draw_(st.booleans()):
        specs["emb"] = Modality("emb", Kind.SEQUENCE_EMBEDDING, max_tokens=draw_(st.integers(1, 20)),
                                embedding_dim=3)
        example["emb"] = rng.normal(size=(draw_(st.integers(0, 25)), 3)).astype(np.float32)
    if not specs:
        specs["seq_x"] = Modality("seq_x", Kind.SEQUENCE, vocab_size=300, max_tokens=8)
        example["seq_x"] = np.array([250, 251, 252])
    names = tuple(specs)
    components = draw_(st.integers(1, 3))
    alphas = lambda: np.array(draw_(st.lists(st.lists(ALPHAS, min_size=len(names), max_size=len(names)),
                                             min_size=components, max_size=components)))
    scheme = st.sampled_from(masking.KEEP_SCHEMES)
    keep = tuple(tuple(draw_(scheme) for _ in names) for _ in range(components))
    weights = draw_(st.none() | st.lists(st.floats(0.1, 3.0), min_size=components, max_size=components))
    mixture = MaskingMixture(names, alphas(), alphas(), keep, weights)
    low = draw_(st.integers(0, 60))
    input_tokens = (low, low + draw_(st.integers(0, 20)))
    target_tokens = draw_(st.none() | st.integers(0, 60))
    extra = {"placeholder_seq": Modality("placeholder_seq", Kind.SEQUENCE, vocab_size=300, max_tokens=5)}
    masker = Masker(mixture, input_tokens, target_tokens, modalities={**specs, **extra},
                    output_modalities=(*names, "placeholder_seq"))
    return masker, example


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(masking_setups(), st.integers(0, 2**32 - 1), st.sampled_from([1, 7]))
def test_invariants_hold_for_random_setups(setup, seed, batch_size):
    masker, example = setup
    out, stats = draw(masker, example, 30, seed, batch_size)
    check_invariants(masker, example, out, stats)


def test_same_seed_same_draw_and_seeds_differ():
    masker = Masker.from_config(configs.load("configs/mixtures/4m7.py"))
    example = seven_modality_example()
    first = masker(example, np.random.default_rng(5))
    again = masker(example, np.random.default_rng(5))
    other = masker(example, np.random.default_rng(6))
    flat = lambda out: np.concatenate([out[n][k].ravel().astype(np.float64) for n in sorted(out) for k in
                                       ("input_mask", "target_mask", "decoder_attention_mask")])
    np.testing.assert_array_equal(flat(first), flat(again))
    assert not np.array_equal(flat(first), flat(other))


def seven_modality_example(seed=0):
    rng = np.random.default_rng(seed)
    example = {"rgb@224": np.zeros((3, 224, 224), np.float32),
               "caption": np.array([4321, 4232, 4926, 4321, 4228]),  # "a dog on a couch"
               "det": np.array([324, 1404, 2654, 4153, 4253])}  # one person box
    for name in ("tok_rgb@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224", "tok_clip@224"):
        example[name] = rng.integers(0, 4096, 196).astype(np.int16)
    return example


# ------------------------------------------------------------------------------------------------
# Hand-derived cases


def test_span_corruption_worked_example():
    """Reference §4.5: "a dog on a couch" + EOS with keep pattern K M M K K M."""
    ids = [4321, 4232, 4926, 4321, 4228, EOS_ID]
    keep = [True, False, False, True, True, False]
    inputs, targets = masking._span_corrupt(ids, keep, chunked=False)
    assert inputs == [4321, 5, 4321, 4228, 6]
    assert targets == [5, 4232, 4926, 6, EOS_ID, 7]


def test_span_corruption_extremes_and_chunks():
    ids = [300, 301, 302]
    assert masking._span_corrupt(ids, [True] * 3, chunked=False) == (ids, [5])
    assert masking._span_corrupt(ids, [False] * 3, chunked=False) == ([5], [5, 300, 301, 302, 6])
    chunks = [[204, 1204], [205, 1205], [EOS_ID]]  # two metadata chunks and the EOS chunk
    assert masking._span_corrupt(chunks, [False, True, False], chunked=True) == (
        [5, 205, 1205, 6], [5, 204, 1204, 6, EOS_ID, 7])


def test_target_truncation_windows():
    target = [5, 300, 301, 6, 302, 7, 303, 304, 305, 8]  # sentinels at 0, 3, 5; the closing one at 9

    class FixedRandom:
        def __init__(self, value):
            self.value = value

        def random(self):
            return self.value

    # j is uniform over the sentinels but the closing one: 3 choices.
    assert masking._truncate_target(FixedRandom(0.0), target, 4) == [5, 300, 301, 6]
    assert masking._truncate_target(FixedRandom(0.5), target, 4) == [6, 302, 7, 303]
    # From [S_3] (index 5) only 5 tokens remain < budget 6: the shortest fitting suffix is taken.
    assert masking._truncate_target(FixedRandom(0.9), target, 6) == [7, 303, 304, 305, 8]
    assert masking._truncate_target(FixedRandom(0.9), target, 0) == []


def test_sequence_eos_and_truncation_like_ml4m():
    spec = Modality("s", Kind.SEQUENCE, vocab_size=300, max_tokens=4)
    masker = Masker(MaskingMixture(("s",), [[1.0]], [[1.0]], (("random",),)), 4, 4, modalities={"s": spec})
    assert masker._sequence_elements(spec, np.array([7, 8]), 0)[0] == [7, 8, EOS_ID]
    assert masker._sequence_elements(spec, np.array([7, 8, 9, 10, 11]), 0)[0] == [7, 8, 9, 10]  # EOS lost
    assert masker._sequence_elements(spec, [[7, 8], [9, 10], [11]], 0) == ([[7, 8], [9, 10]], [2, 2])
    assert masker._sequence_elements(spec, [[7, 8], [9]], 0) == ([[7, 8], [9], [EOS_ID]], [2, 1, 1])
    assert masker._sequence_elements(spec, np.array([], np.int64), 0)[0] == [EOS_ID]


def one_hot_masker(alphas, num_tokens, max_tokens, kind=Kind.IMAGE_TOKENS):
    names = tuple(f"m{i}" for i in range(len(alphas)))
    specs = {name: Modality(name, kind, vocab_size=10, max_tokens=max_tokens, patch_size=16)
             for name in names}
    mixture = MaskingMixture(names, [alphas], [alphas], (("random",) * len(names),))
    return Masker(mixture, num_tokens, num_tokens, modalities=specs), names


def budgets_of(masker, names, draws, seed=0):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(draws):
        stats = {}
        masker({name: np.zeros(masker.specs[name].max_tokens, np.int32) for name in names}, rng, stats)
        rows.append([stats[f"{name}/in_budget"] for name in names])
    return np.array(rows)


def test_near_one_hot_budgets_follow_the_float32_clamp():
    """Reference §4.3: with alpha 0.01 over 19 modalities and 256 tokens the winner usually gets n - 1
    tokens and a random other modality the last one; exactly n to one modality is rare (~2%)."""
    masker, names = one_hot_masker([0.01] * 19, 256, 300)
    budgets = budgets_of(masker, names, 2000)
    assert (budgets.sum(1) == 256).all()
    top = budgets.max(1)
    assert 0.25 < np.mean((top == 255) & ((budgets > 0).sum(1) == 2)) < 0.45
    assert np.mean(top == 256) < 0.05


def test_dominant_alpha_takes_the_whole_budget_and_clamps_are_not_redistributed():
    masker, names = one_hot_masker([1000.0, 0.0, 0.0], 128, 196)
    assert (budgets_of(masker, names, 200)[:, 0] == 128).all()  # rgb2all: all input to one modality
    masker, names = one_hot_masker([1000.0, 0.0, 0.0], 256, 196)
    assert (budgets_of(masker, names, 200) == [196, 0, 0]).all()  # clamped at 196, the rest is lost


def test_image_target_budget_is_capped_by_its_input_budget():
    masker, names = one_hot_masker([1000.0, 1e-9], 150, 196)
    rng = np.random.default_rng(0)
    for _ in range(50):
        stats = {}
        out = masker({name: np.zeros(196, np.int32) for name in names}, rng, stats)
        assert stats["m0/in_budget"] == 150 and stats["m0/tg_budget"] <= 46
        assert (~out["m0"]["target_mask"]).sum() == stats["m0/tg_budget"]


def test_component_frequencies_follow_sampling_weights():
    """4M-21's weights [1, 1, 1, 1, 1, 0.5, 0.5]: 1/6 for the first five components, 1/12 for the biases."""
    weights = configs.load("configs/mixtures/4m21.py").sampling_weights
    spec = Modality("m", Kind.IMAGE_TOKENS, vocab_size=4, max_tokens=4, patch_size=16)
    mixture = MaskingMixture(("m",), [[1.0]] * 7, [[1.0]] * 7, (("random",),) * 7, weights)
    stats = {}
    Masker(mixture, 2, 2, modalities={"m": spec}).mask_batch([{"m": np.zeros(4, np.int32)}] * 12_000,
                                                             np.random.default_rng(0), stats)
    observed = np.bincount(stats["dir_idx"], minlength=7)
    expected = 12_000 * np.array([2, 2, 2, 2, 2, 1, 1]) / 12
    assert scipy.stats.chisquare(observed, expected).pvalue > P_THRESHOLD


def test_missing_output_modalities_are_fully_masked_placeholders():
    mixture = MaskingMixture.from_config(configs.load("configs/mixtures/4m21.py:c4"))
    masker = Masker(mixture, 256, 256, output_modalities=["caption", "det", "tok_rgb@224", "t5_caption",
                                                          "rgb@224"])
    out = masker({"caption": np.array([4321, 4232])}, np.random.default_rng(0))
    assert list(out) == ["caption", "det", "tok_rgb@224", "t5_caption", "rgb@224"]
    shapes = {name: {key: value.shape for key, value in arrays.items()} for name, arrays in out.items()}
    assert shapes["det"] == dict(tensor=(514,), input_mask=(514,), target_mask=(514,),
                                 decoder_attention_mask=(514,))
    assert shapes["t5_caption"]["tensor"] == (77, 4096) and shapes["rgb@224"]["tensor"] == (3, 224, 224)
    hwc = Masker(mixture, 256, 256, output_modalities=["caption", "rgb@224"], pixel_format="uint8_hwc")
    assert hwc.output_spec()["rgb@224"]["tensor"] == ((224, 224, 3), np.uint8)
    pixels = hwc({"caption": np.array([4321])}, np.random.default_rng(0))["rgb@224"]["tensor"]
    assert pixels.shape == (224, 224, 3) and pixels.dtype == np.uint8
    for name in ("det", "tok_rgb@224", "t5_caption", "rgb@224"):
        assert out[name]["input_mask"].all() and out[name]["target_mask"].all()
        assert not out[name]["decoder_attention_mask"].any() and not out[name]["tensor"].any()
    assert out["caption"]["tensor"].dtype == np.int32 and (~out["caption"]["input_mask"]).any() | (
        ~out["caption"]["target_mask"]).any()


def test_mixture_configs_match_ml4m_alphas_files():
    mix7 = MaskingMixture.from_config(configs.load("configs/mixtures/4m7.py"))
    assert mix7.modalities == ("caption", "det", "rgb@224", "tok_clip@224", "tok_depth@224",
                               "tok_normal@224", "tok_rgb@224", "tok_semseg@224")
    np.testing.assert_array_equal(mix7.input_alphas[:, 2], [1000.0, 0.5])
    np.testing.assert_array_equal(mix7.target_alphas[:, 2], [0.0, 0.0])
    np.testing.assert_array_equal(mix7.target_alphas[0], [0.5, 0.5, 0.0, 0.5, 0.5, 0.5, 0.5, 0.5])
    mix21 = MaskingMixture.from_config(configs.load("configs/mixtures/4m21.py"))
    assert len(mix21.modalities) == 19 and mix21.weights == (1, 1, 1, 1, 1, 0.5, 0.5)
    column = {name: i for i, name in enumerate(mix21.modalities)}
    assert [row[column["caption"]] for row in mix21.keep] == ["random"] * 5 + ["all", "random"]
    assert [row[column["t5_caption"]] for row in mix21.keep] == ["random"] * 6 + ["all"]
    assert {row[column["color_palette"]] for row in mix21.keep} == {"binary"}
    np.testing.assert_array_equal(mix21.input_alphas[:, column["caption"]], [0.01, 0.1, 1, 10, 0, 5, 0])
    np.testing.assert_array_equal(mix21.target_alphas[:, column["t5_caption"]],
                                  [0.01, 0.1, 1, 10, 0.5, 0.5, 0])
    masker = Masker.from_config(configs.load("configs/mixtures/4m21.py"))
    assert (masker.input_range, masker.target_range) == ((256, 256), (256, 256))
    masker = Masker.from_config(configs.load("configs/mixtures/4m7.py", ["min_input_tokens=0"]))
    assert (masker.input_range, masker.target_range) == ((0, 128), (128, 128))


# ------------------------------------------------------------------------------------------------
# Bad input


def test_bad_examples_are_named():
    masker = Masker.from_config(configs.load("configs/mixtures/4m7.py"))
    rng = np.random.default_rng(0)
    example = seven_modality_example()
    with pytest.raises(KeyError, match="no modality 'det'"):
        masker({k: v for k, v in example.items() if k != "det"}, rng)
    with pytest.raises(ValueError, match=r"'tok_semseg@224' \(example 0\): token id 4096 at index 3 is "
                                         r"outside the vocabulary \[0, 4096\)"):
        bad = example["tok_semseg@224"].copy()
        bad[3] = 4096
        masker({**example, "tok_semseg@224": bad}, rng)
    with pytest.raises(ValueError, match=r"'tok_rgb@224' \(example 0\): token id 4294967296 at index 0"):
        masker({**example, "tok_rgb@224": np.full(196, 2**32, np.int64)}, rng)
    with pytest.raises(ValueError, match=r"'tok_rgb@224' \(example 0\): token id -1 at index 0"):
        masker({**example, "tok_rgb@224": np.full(196, -1, np.int16)}, rng)
    with pytest.raises(ValueError, match=r"'caption' \(example 0\): token id 30000 at index 1"):
        masker({**example, "caption": np.array([5, 30000])}, rng)
    with pytest.raises(ValueError, match=r"'tok_rgb@224' \(example 0\): expected integer token ids of "
                                         r"shape \(196,\)"):
        masker({**example, "tok_rgb@224": np.zeros(195, np.int32)}, rng)
    with pytest.raises(ValueError, match="'tok_rgb@224'.*dtype float32"):
        masker({**example, "tok_rgb@224": np.zeros(196, np.float32)}, rng)
    with pytest.raises(TypeError, match=r"'caption' \(example 0\): expected token ids, got text"):
        masker({**example, "caption": "a dog"}, rng)
    with pytest.raises(ValueError, match=r"'det' \(example 0\): token id -1 at chunk 1 index 0"):
        masker({**example, "det": [[5, 6], [-1]]}, rng)
    with pytest.raises(ValueError, match=r"'det' \(example 0\): chunk 0 has no tokens"):
        masker({**example, "det": [[], [5]]}, rng)
    batch = [example, example, {**example, "det": np.array([7, 31000])}]
    with pytest.raises(ValueError, match=r"'det' \(example 2\): token id 31000 at index 1"):
        masker.mask_batch(batch, rng)


def test_bad_mixtures_are_named():
    config = configs.load("configs/mixtures/4m7.py")
    config.alphas["det"].keep = ["random", "sometimes"]
    with pytest.raises(ValueError, match=r"keep\['det'\]\[1\] = 'sometimes'"):
        MaskingMixture.from_config(config)
    config = configs.load("configs/mixtures/4m7.py")
    config.alphas["det"].target_alphas = [0.5]
    with pytest.raises(ValueError, match=r"alphas\['det'\].target_alphas: expected 2 values"):
        MaskingMixture.from_config(config)
    config = configs.load("configs/mixtures/4m7.py")
    config.alphas["det"].input_alphas = [-1.0, 0.5]
    with pytest.raises(ValueError, match=r"input_alphas\['det'\]\[0\] = -1.0"):
        MaskingMixture.from_config(config)
    config = configs.load("configs/mixtures/4m7.py", ["sampling_weights=[1.0]"])
    with pytest.raises(ValueError, match="expected 2 weights"):
        MaskingMixture.from_config(config)
    with pytest.raises(ValueError, match="input_tokens"):
        Masker.from_config(configs.load("configs/mixtures/4m7.py", ["min_input_tokens=200"]))
    with pytest.raises(KeyError, match="unknown modality 'tok_x'"):
        Masker(MaskingMixture(("tok_x",), [[1.0]], [[1.0]], (("random",),)), 8, 8)
    with pytest.raises(ValueError, match="'CLIP-B16'.*cannot be masked"):
        Masker(MaskingMixture(("CLIP-B16",), [[1.0]], [[1.0]], (("random",),)), 8, 8)
