import numpy as np
import pytest

from fourm_jax.scaling import fit
from fourm_jax.scaling.table import Runs, TableError
from tests.scaling.synthetic import CHINCHILLA, K, grid_runs, isoflop_runs

# Tolerances at 1% multiplicative noise on a 7-budget x 9-size IsoFLOP grid spanning 1e18-1e21
# FLOPs (Chinchilla-like, off-centre): exponents and the allocation exponent within 0.05 of the
# truth, E within 5%; Approach 2 and 3 allocation exponents within 0.05 of each other.
EXPONENT_TOLERANCE = 0.05
AGREEMENT_TOLERANCE = 0.05


def _runs(n, d, c, loss, column="loss"):
    return Runs(path="synthetic", names=tuple(f"run{i}" for i in range(len(n))), n=n, d=d, c=c,
                losses={column: loss}, columns={"n": "params", "d": None, "flops": "flops"},
                flops_per_param_token=K, flops_per_param_token_source="given")


@pytest.fixture(scope="module")
def noisy_fit():
    return fit.fit_column(_runs(*isoflop_runs(seed=0)), "loss", bootstrap=40, seed=1)


def test_noise_free_runs_give_the_law_back():
    n, d, _, loss = isoflop_runs(noise=0.0)
    for method in (fit.fit_huber, fit.fit_varpro):
        law, _ = method(n, d, loss)
        for name in ("E", "A", "B", "alpha", "beta"):
            assert getattr(law, name) == pytest.approx(getattr(CHINCHILLA, name), rel=1e-4), (method, name)


def test_noisy_runs_recover_the_exponents(noisy_fit):
    a3 = noisy_fit["approach3"]
    assert abs(a3["alpha"] - CHINCHILLA.alpha) <= EXPONENT_TOLERANCE
    assert abs(a3["beta"] - CHINCHILLA.beta) <= EXPONENT_TOLERANCE
    assert abs(a3["a"] - CHINCHILLA.a) <= EXPONENT_TOLERANCE
    assert a3["E"] == pytest.approx(CHINCHILLA.E, rel=0.05)
    assert a3["rms_log_residual"] == pytest.approx(0.01, rel=0.3)  # the noise level


def test_variable_projection_agrees_with_huber(noisy_fit):
    a3 = noisy_fit["approach3"]
    for name in ("alpha", "beta"):
        assert abs(a3["varpro"][name] - a3["huber"][name]) <= AGREEMENT_TOLERANCE
    assert a3["agreement"]["agree"]
    assert a3["agreement"]["max_relative_prediction_difference"] < 0.01


def test_approach_2_agrees_with_approach_3_and_the_truth(noisy_fit):
    a2 = noisy_fit["approach2"]
    assert len(a2["budgets"]) == 7 and not a2["excluded"]
    assert abs(a2["a"] - noisy_fit["approach3"]["a"]) <= AGREEMENT_TOLERANCE
    assert abs(a2["a"] - CHINCHILLA.a) <= EXPONENT_TOLERANCE
    assert a2["a"] + a2["b"] == pytest.approx(1.0)  # D_opt = C / (6 N_opt)
    assert noisy_fit["allocation_agreement"]["a_difference"] <= AGREEMENT_TOLERANCE


def test_bootstrap_intervals_cover_the_truth(noisy_fit):
    intervals = noisy_fit["approach3"]["intervals"]
    for name in ("E", "A", "B", "alpha", "beta", "a", "b"):
        low, high = intervals[name]
        assert low < getattr(CHINCHILLA, name) < high, name
    assert intervals["alpha"][1] - intervals["alpha"][0] < 0.2  # informative, not everything
    low, high = noisy_fit["approach2"]["intervals"]["a"]
    assert low < CHINCHILLA.a < high


@pytest.mark.slow
def test_bootstrap_coverage_over_many_datasets():
    """95% intervals should contain the truth in about 95% of datasets; accept at least 85% of 20."""
    hits = {"alpha": 0, "beta": 0, "a": 0}
    for seed in range(20):
        n, d, _, loss = isoflop_runs(seed=100 + seed)
        law, _ = fit.fit_huber(n, d, loss)
        intervals = fit.bootstrap_huber(n, d, loss, law, samples=60, seed=seed, confidence=0.95)
        for name in hits:
            hits[name] += intervals[name][0] <= getattr(CHINCHILLA, name) <= intervals[name][1]
    assert all(count >= 17 for count in hits.values()), hits


def test_grid_design_fits_approach_3_and_skips_approach_2():
    result = fit.fit_column(_runs(*grid_runs(seed=3)), "loss", bootstrap=0)
    a3 = result["approach3"]
    assert abs(a3["alpha"] - CHINCHILLA.alpha) <= EXPONENT_TOLERANCE
    assert abs(a3["beta"] - CHINCHILLA.beta) <= EXPONENT_TOLERANCE
    assert "Approach 2 needs at least 2 compute budgets" in result["approach2"]["skipped"]


def test_compute_optimal_allocation_minimises_the_loss():
    law = CHINCHILLA
    assert law.a == pytest.approx(0.28 / 0.62) and law.a + law.b == pytest.approx(1.0)
    for c in (1e19, 1e22, 1e25):
        n_opt, d_opt = law.optimal(c, K)
        assert K * n_opt * d_opt == pytest.approx(c)
        sizes = n_opt * np.geomspace(0.5, 2.0, 2001)  # brute force along the IsoFLOP line
        best = sizes[np.argmin(law.loss(sizes, c / (K * sizes)))]
        assert best == pytest.approx(n_opt, rel=1e-3)
    allocation = law.allocation(K)
    assert allocation["N_opt_coefficient"] * 1e22 ** law.a == pytest.approx(law.optimal(1e22, K)[0])


def test_group_budgets():
    labels = fit.group_budgets(np.array([1e18, 1.02e18, 3e18, 0.99e18, 3.1e18, 1e19]), rtol=0.05)
    assert list(labels) == [0, 0, 1, 0, 1, 2]


def test_too_few_runs_is_an_error_naming_the_column():
    n, d, c, loss = isoflop_runs(budgets=[1e19], sizes_per_budget=5)
    with pytest.raises(TableError, match="loss column 'loss/tok_rgb@224' has 5 runs.*at least 6"):
        fit.fit_column(_runs(n, d, c, loss, column="loss/tok_rgb@224"), "loss/tok_rgb@224")


def test_a_single_model_size_is_an_error():
    n, d, c, loss = grid_runs()
    n = np.full_like(n, 1e8)
    with pytest.raises(TableError, match="column 'params' has a single value"):
        fit.fit_column(_runs(n, d, c, loss), "loss")


def test_approach_2_needs_two_budgets():
    n, d, c, loss = isoflop_runs(budgets=[1e19])
    with pytest.raises(TableError, match="Approach 2 needs at least 2 compute budgets"):
        fit.fit_isoflop(n, c, loss, flops_per_param_token=K)


def test_fit_runs_validates_options():
    runs = _runs(*grid_runs())
    with pytest.raises(ValueError, match="confidence"):
        fit.fit_runs(runs, confidence=1.5)
    with pytest.raises(ValueError, match="bootstrap"):
        fit.fit_runs(runs, bootstrap=-1)
