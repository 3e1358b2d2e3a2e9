"""Synthetic runs tables drawn from a known scaling law, for the fit and report tests."""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np

from fourm_jax.scaling.fit import Law

# Hoffmann et al. 2022, Approach 3 (../shared/reference/jax-anchors.md section 4).
CHINCHILLA = Law(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
K = 6.0  # C = 6·N·D


BUDGETS = np.geomspace(1e18, 1e21, 7)


def isoflop_runs(law: Law = CHINCHILLA, *, seed: int = 0, noise: float = 0.01, budgets=BUDGETS,
                 sizes_per_budget: int = 9, spread: float = 8.0):
    """An IsoFLOP design like Chinchilla's: per budget C, `sizes_per_budget` model sizes spaced
    evenly in log N over [N*/spread, N*·spread] around a centre N* within a factor 2 of the true
    optimum (off-centre, as real sweeps are), D = C/(6N), loss x (1 + noise·N(0, 1)).
    Returns (n, d, c, loss)."""
    rng = np.random.default_rng(seed)
    n, c = [], []
    for budget in budgets:
        centre = law.optimal(budget, K)[0] * np.exp(rng.uniform(-np.log(2), np.log(2)))
        n.append(centre * np.geomspace(1 / spread, spread, sizes_per_budget))
        c.append(np.full(sizes_per_budget, budget))
    n, c = np.concatenate(n), np.concatenate(c)
    d = c / (K * n)
    return n, d, c, law.loss(n, d) * (1 + noise * rng.standard_normal(len(n)))


def grid_runs(law: Law = CHINCHILLA, *, seed: int = 0, noise: float = 0.01):
    """A grid design: 7 model sizes x 7 token budgets (no two runs share a compute budget)."""
    rng = np.random.default_rng(seed)
    n, d = (a.ravel() for a in np.meshgrid(np.geomspace(2e7, 1.5e10, 7), np.geomspace(3e8, 4e11, 7) * 1.013))
    return n, d, K * n * d, law.loss(n, d) * (1 + noise * rng.standard_normal(len(n)))


def write_table(path: pathlib.Path, columns: dict[str, np.ndarray]) -> pathlib.Path:
    """Writes columns (plus a `run` name column) as CSV, or JSON lines for a .jsonl path."""
    count = len(next(iter(columns.values())))
    rows = [{"run": f"run{i:03d}"} | {name: float(values[i]) for name, values in columns.items()}
            for i in range(count)]
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return path
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
