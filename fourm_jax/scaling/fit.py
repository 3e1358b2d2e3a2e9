"""Scaling-law fits of L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022).

Approach 3, two ways that must agree:
  * `fit_huber`: Chinchilla's method. Minimise sum_i Huber_delta(LSE(a - alpha log N_i,
    b - beta log D_i, e) - log L_i) with delta = 1e-3 over (a, b, e, alpha, beta), A = e^a, B = e^b,
    E = e^e, by L-BFGS from the best points of a grid of starts. The objective is divided by
    n·delta² so that L-BFGS's relative stopping test does not stop at the tiny raw values (the
    early stopping Besiroglu et al. 2024 found in the original fit).
  * `fit_varpro`: variable projection (Czech et al. 2026). For fixed (alpha, beta) the law is linear
    in (E, A, B): solve them by non-negative least squares on relative residuals (L̂ - L)/L, which
    approximate the log-loss residuals; search (alpha, beta) on a grid, then refine (Nelder-Mead).
Approach 2 (`fit_isoflop`): per compute budget fit a parabola of loss against log N, take its
minimum N_opt, and fit N_opt = G_N·C^a, D_opt = C/(k·N_opt) = G_D·C^b.
Compute-optimal allocation from Approach 3 with C = k·N·D: N_opt = G (C/k)^a, D_opt = G^-1 (C/k)^b,
a = beta/(alpha+beta), b = alpha/(alpha+beta), G = (alpha A / (beta B))^(1/(alpha+beta)).
Bootstrap intervals resample runs (Approach 2: within each budget).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import warnings

import numpy as np
import scipy.optimize
import threadpoolctl

from fourm_jax.scaling.table import Runs, TableError

HUBER_DELTA = 1e-3
NUM_PARAMETERS = 5
# Chinchilla's grid of initialisations (Hoffmann et al. 2022, appendix D.2).
HUBER_GRID = {"alpha": np.arange(0.0, 2.01, 0.5), "beta": np.arange(0.0, 2.01, 0.5),
              "e": np.arange(-1.0, 1.01, 0.5), "a": np.arange(0.0, 25.1, 5.0),
              "b": np.arange(0.0, 25.1, 5.0)}
EXPONENT_BOUNDS = (1e-3, 3.0)  # alpha, beta > 0 keeps the allocation (G, a, b) finite
SCHEMA = "fourm_jax.scaling.fit/1"


@dataclasses.dataclass(frozen=True)
class Law:
    """L(N, D) = E + A / N^alpha + B / D^beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n, d):
        return self.E + self.A / np.power(n, self.alpha) + self.B / np.power(d, self.beta)

    @property
    def a(self) -> float:
        """Exponent of N_opt(C)."""
        return self.beta / (self.alpha + self.beta)

    @property
    def b(self) -> float:
        """Exponent of D_opt(C)."""
        return self.alpha / (self.alpha + self.beta)

    @property
    def G(self) -> float:
        return (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))

    def optimal(self, c, flops_per_param_token: float):
        """(N_opt, D_opt) minimising the loss at compute C = k·N·D."""
        scaled = np.asarray(c, dtype=np.float64) / flops_per_param_token
        return self.G * scaled**self.a, scaled**self.b / self.G

    def allocation(self, flops_per_param_token: float) -> dict[str, float]:
        """N_opt = N_opt_coefficient·C^a and D_opt = D_opt_coefficient·C^b."""
        k = flops_per_param_token
        return {"a": self.a, "b": self.b, "G": self.G, "N_opt_coefficient": self.G * k**-self.a,
                "D_opt_coefficient": k**-self.b / self.G}

    def as_dict(self) -> dict[str, float]:
        return dataclasses.asdict(self)


def _one_blas_thread():
    """One BLAS thread for the block. scipy's L-BFGS-B makes thousands of tiny BLAS calls; with a
    multi-threaded OpenBLAS on a busy machine each becomes a thread hand-off (measured 8-50x slower
    on 2 shared cores)."""
    return threadpoolctl.threadpool_limits(limits=1, user_api="blas")


def _check_fittable(runs: Runs, column: str) -> None:
    if len(runs) <= NUM_PARAMETERS:
        raise TableError(f"{runs.path}: loss column {column!r} has {len(runs)} runs; Approach 3 fits "
                         f"{NUM_PARAMETERS} parameters and needs at least {NUM_PARAMETERS + 1}")
    for role, values in (("n", runs.n), ("d", runs.d)):
        if len(np.unique(values)) < 2:
            name = runs.columns[role] or f"{role.upper()} (derived)"
            raise TableError(f"{runs.path}: column {name!r} has a single value; Approach 3 needs "
                             f"runs with at least 2 different values of {role.upper()}")


# ----------------------------------------------------------------------------- Huber / L-BFGS


def _huber_objective(theta, log_n, log_d, log_l, delta):
    """Normalised Huber objective and its gradient; theta = (a, b, e, alpha, beta)."""
    a, b, e, alpha, beta = theta
    terms = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms.max(axis=0)
    predicted = top + np.log(np.exp(terms - top).sum(axis=0))
    residual = predicted - log_l
    quadratic = np.abs(residual) <= delta
    huber = np.where(quadratic, 0.5 * residual**2, delta * (np.abs(residual) - 0.5 * delta))
    slope = np.where(quadratic, residual, delta * np.sign(residual))
    weights = np.exp(terms - predicted)  # d predicted / d term
    scale = 1.0 / (len(log_l) * delta**2)
    grad = np.array([(slope * weights[0]).sum(), (slope * weights[1]).sum(), (slope * weights[2]).sum(),
                     -(slope * weights[0] * log_n).sum(), -(slope * weights[1] * log_d).sum()])
    return huber.sum() * scale, grad * scale


def _huber_grid_values(log_n, log_d, log_l, delta):
    """The objective at every point of HUBER_GRID, vectorised; returns (starts (S, 5), values (S,))."""
    starts = np.array(list(itertools.product(HUBER_GRID["a"], HUBER_GRID["b"], HUBER_GRID["e"],
                                             HUBER_GRID["alpha"], HUBER_GRID["beta"])))
    a, b, e, alpha, beta = (starts[:, i:i + 1] for i in range(5))
    predicted = np.logaddexp(np.logaddexp(a - alpha * log_n, b - beta * log_d), e)
    r = np.abs(predicted - log_l)
    values = np.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta)).sum(axis=1)
    return starts, values / (len(log_l) * delta**2)


def _lbfgs(start, log_n, log_d, log_l, delta):
    bounds = [(None, None)] * 3 + [EXPONENT_BOUNDS] * 2
    return scipy.optimize.minimize(_huber_objective, start, args=(log_n, log_d, log_l, delta), jac=True,
                                   method="L-BFGS-B", bounds=bounds,
                                   options={"maxiter": 10_000, "ftol": 1e-12, "gtol": 1e-9})


def _law_from_theta(theta) -> Law:
    a, b, e, alpha, beta = (float(v) for v in theta)
    return Law(E=math.exp(e), A=math.exp(a), B=math.exp(b), alpha=alpha, beta=beta)


def _theta_from_law(law: Law) -> np.ndarray:
    tiny = 1e-300
    return np.array([math.log(max(law.A, tiny)), math.log(max(law.B, tiny)), math.log(max(law.E, tiny)),
                     law.alpha, law.beta])


def fit_huber(n, d, loss, *, delta: float = HUBER_DELTA, num_starts: int = 16,
              starts: list[Law] | None = None) -> tuple[Law, float]:
    """Approach 3 by Huber loss on log loss and L-BFGS. Runs L-BFGS from the `num_starts` best
    points of Chinchilla's grid (and from `starts`, if given; with starts and num_starts=0 only
    from those, as the bootstrap does) and keeps the best. Returns (law, objective)."""
    log_n, log_d, log_l = np.log(n), np.log(d), np.log(loss)
    candidates = [_theta_from_law(law) for law in starts or []]
    if num_starts:
        grid, values = _huber_grid_values(log_n, log_d, log_l, delta)
        candidates += list(grid[np.argsort(values)[:num_starts]])
    best = None
    with _one_blas_thread():
        for start in candidates:
            result = _lbfgs(start, log_n, log_d, log_l, delta)
            if best is None or result.fun < best.fun:
                best = result
    return _law_from_theta(best.x), float(best.fun)


# ----------------------------------------------------------------------------- variable projection


def _nnls_coefficients(n, d, loss, alpha, beta):
    """(E, A, B) >= 0 minimising sum ((E + A N^-alpha + B D^-beta - L) / L)^2, and that sum."""
    design = np.stack([np.ones_like(n), n**-alpha, d**-beta], axis=1) / loss[:, None]
    norms = np.linalg.norm(design, axis=0)
    coefficients, residual = scipy.optimize.nnls(design / norms, np.ones_like(loss))
    return coefficients / norms, residual**2


def fit_varpro(n, d, loss, *, grid_size: int = 40) -> tuple[Law, float]:
    """Approach 3 by variable projection; returns (law, mean squared relative residual)."""
    grid = np.linspace(0.02, 1.5, grid_size)

    def projected(exponents):
        alpha, beta = exponents
        low, high = EXPONENT_BOUNDS
        if not (low <= alpha <= high and low <= beta <= high):
            return np.inf
        return _nnls_coefficients(n, d, loss, alpha, beta)[1]

    values = np.array([[projected((alpha, beta)) for beta in grid] for alpha in grid])
    i, j = np.unravel_index(np.argmin(values), values.shape)
    result = scipy.optimize.minimize(projected, [grid[i], grid[j]], method="Nelder-Mead",
                                     options={"xatol": 1e-7, "fatol": 1e-14, "maxiter": 4000})
    alpha, beta = result.x
    (E, A, B), value = _nnls_coefficients(n, d, loss, alpha, beta)
    return Law(E=float(E), A=float(A), B=float(B), alpha=float(alpha), beta=float(beta)), value / len(loss)


# ----------------------------------------------------------------------------- Approach 2


def group_budgets(c, rtol: float = 0.05) -> np.ndarray:
    """Labels runs whose compute lies within a factor (1 + rtol) of the group's smallest together."""
    order = np.argsort(c)
    labels = np.empty(len(c), dtype=int)
    label, first = -1, None
    for i in order:
        if first is None or c[i] > first * (1 + rtol):
            label, first = label + 1, c[i]
        labels[i] = label
    return labels


def _power_law(x, y):
    """(exponent, coefficient) of y = coefficient·x^exponent by least squares in log-log."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(math.exp(intercept))


def _isoflop_minima(n, c, loss, labels, flops_per_param_token):
    budgets, excluded = [], []
    for label in np.unique(labels):
        members = labels == label
        budget = float(np.exp(np.log(c[members]).mean()))
        x, y = np.log(n[members]), loss[members]
        if len(np.unique(x)) < 3:
            excluded.append({"C": budget, "num_runs": int(members.sum()),
                             "reason": "fewer than 3 model sizes"})
            continue
        p2, p1, p0 = np.polyfit(x, y, 2)
        vertex = -p1 / (2 * p2) if p2 > 0 else None
        if vertex is None or not x.min() <= vertex <= x.max():
            excluded.append({"C": budget, "num_runs": int(members.sum()),
                             "reason": "parabola has no minimum inside the sampled model sizes"})
            continue
        n_opt = float(np.exp(vertex))
        budgets.append({"C": budget, "N_opt": n_opt, "D_opt": budget / (flops_per_param_token * n_opt),
                        "loss_min": float(p0 + p1 * vertex + p2 * vertex**2),
                        "parabola": [float(p2), float(p1), float(p0)], "num_runs": int(members.sum())})
    return budgets, excluded


def fit_isoflop(n, c, loss, *, flops_per_param_token: float, budget_rtol: float = 0.05) -> dict:
    """Approach 2. Returns a dict with the allocation exponents a, b and coefficients, and the
    per-budget minima; raises TableError when fewer than 2 budgets have a usable parabola."""
    labels = group_budgets(c, budget_rtol)
    budgets, excluded = _isoflop_minima(n, c, loss, labels, flops_per_param_token)
    if len(budgets) < 2:
        raise TableError(f"Approach 2 needs at least 2 compute budgets with 3 or more model sizes and a "
                         f"minimum inside them; found {len(budgets)} among {len(np.unique(labels))} budgets")
    budget_c = np.array([b["C"] for b in budgets])
    a, n_coefficient = _power_law(budget_c, [b["N_opt"] for b in budgets])
    b, d_coefficient = _power_law(budget_c, [b["D_opt"] for b in budgets])
    return {"a": a, "b": b, "N_opt_coefficient": n_coefficient, "D_opt_coefficient": d_coefficient,
            "budgets": budgets, "excluded": excluded}


# ----------------------------------------------------------------------------- bootstrap + driver


def _interval(samples, confidence):
    lower = 100 * (1 - confidence) / 2
    return [float(np.percentile(samples, lower)), float(np.percentile(samples, 100 - lower))]


def bootstrap_huber(n, d, loss, law: Law, *, samples: int, seed: int, confidence: float) -> dict:
    """Percentile intervals of E, A, B, alpha, beta, a, b from `samples` refits on runs drawn with
    replacement, each started from the full-data fit."""
    rng = np.random.default_rng(seed)
    fits = []
    with _one_blas_thread():
        for _ in range(samples):
            index = rng.integers(0, len(n), len(n))
            fits.append(fit_huber(n[index], d[index], loss[index], num_starts=0, starts=[law])[0])
    names = ("E", "A", "B", "alpha", "beta", "a", "b")
    return {name: _interval([getattr(f, name) for f in fits], confidence) for name in names}


def bootstrap_isoflop(n, c, loss, *, flops_per_param_token, budget_rtol, samples, seed, confidence):
    """Intervals of Approach 2's a and b, resampling runs within each budget."""
    rng = np.random.default_rng(seed)
    labels = group_budgets(c, budget_rtol)
    groups = [np.flatnonzero(labels == label) for label in np.unique(labels)]
    exponents = []
    for _ in range(samples):
        index = np.concatenate([rng.choice(g, len(g)) for g in groups])
        try:
            fit = fit_isoflop(n[index], c[index], loss[index], flops_per_param_token=flops_per_param_token,
                              budget_rtol=budget_rtol)
        except TableError:
            continue
        exponents.append((fit["a"], fit["b"]))
    if len(exponents) < samples / 2:
        return {"a": None, "b": None, "failed_resamples": samples - len(exponents)}
    a, b = np.array(exponents).T
    return {"a": _interval(a, confidence), "b": _interval(b, confidence),
            "failed_resamples": samples - len(exponents)}


def fit_column(runs: Runs, column: str, *, bootstrap: int = 200, seed: int = 0, confidence: float = 0.95,
               budget_rtol: float = 0.05, agreement_tolerance: float = 0.05) -> dict:
    """Approaches 3 and 2 with intervals for one loss column of `runs` (the JSON of one fit)."""
    _check_fittable(runs, column)
    n, d, c, loss = runs.n, runs.d, runs.c, runs.losses[column]
    k = runs.flops_per_param_token
    huber, huber_objective = fit_huber(n, d, loss)
    varpro, varpro_objective = fit_varpro(n, d, loss)
    prediction_gap = np.abs(huber.loss(n, d) - varpro.loss(n, d)) / loss
    differences = {name: abs(getattr(huber, name) - getattr(varpro, name)) for name in ("alpha", "beta", "a")}
    agreement = {f"{name}_difference": value for name, value in differences.items()}
    agreement["max_relative_prediction_difference"] = float(prediction_gap.max())
    agreement["tolerance"] = agreement_tolerance
    agreement["agree"] = bool(max(differences.values()) <= agreement_tolerance)
    if not agreement["agree"]:
        warnings.warn(f"{runs.path}, {column}: the Huber and variable-projection fits disagree "
                      f"({agreement}); the law is poorly determined by these runs", stacklevel=2)
    residual = np.log(huber.loss(n, d)) - np.log(loss)
    approach3 = huber.as_dict() | huber.allocation(k) | {
        "intervals": bootstrap_huber(n, d, loss, huber, samples=bootstrap, seed=seed, confidence=confidence)
        if bootstrap else {},
        "huber": huber.as_dict() | {"objective": huber_objective, "delta": HUBER_DELTA},
        "varpro": varpro.as_dict() | {"objective": varpro_objective},
        "agreement": agreement,
        "rms_log_residual": float(np.sqrt(np.mean(residual**2))),
    }
    result = {"num_runs": len(runs), "approach3": approach3}
    try:
        approach2 = fit_isoflop(n, c, loss, flops_per_param_token=k, budget_rtol=budget_rtol)
    except TableError as e:
        result["approach2"] = {"skipped": str(e)}
        return result
    if bootstrap:
        approach2["intervals"] = bootstrap_isoflop(n, c, loss, flops_per_param_token=k,
                                                   budget_rtol=budget_rtol, samples=bootstrap, seed=seed,
                                                   confidence=confidence)
    result["approach2"] = approach2
    result["allocation_agreement"] = {"a_difference": abs(approach2["a"] - huber.a),
                                      "b_difference": abs(approach2["b"] - huber.b)}
    return result


def fit_runs(runs: Runs, *, bootstrap: int = 200, seed: int = 0, confidence: float = 0.95,
             budget_rtol: float = 0.05) -> dict:
    """Fits every loss column of `runs`; the document `tools/scaling_laws.py fit` writes as JSON."""
    if not (isinstance(bootstrap, int) and bootstrap >= 0):
        raise ValueError(f"bootstrap must be a non-negative number of resamples, got {bootstrap!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if not budget_rtol >= 0:
        raise ValueError(f"budget_rtol must be non-negative, got {budget_rtol!r}")
    options = {"bootstrap": bootstrap, "seed": seed, "confidence": confidence, "budget_rtol": budget_rtol}
    return {
        "schema": SCHEMA,
        "table": runs.path,
        "columns": runs.columns | {"loss": list(runs.losses)},
        "flops_per_param_token": runs.flops_per_param_token,
        "flops_per_param_token_source": runs.flops_per_param_token_source,
        "num_runs": len(runs),
        "options": options | {"huber_delta": HUBER_DELTA},
        "fits": {column: fit_column(runs, column, **options) for column in runs.losses},
    }


def law_from_fit(result: dict) -> Law:
    """The Approach 3 law of one entry of a fit document's "fits"."""
    approach3 = result["approach3"]
    return Law(**{name: approach3[name] for name in ("E", "A", "B", "alpha", "beta")})
