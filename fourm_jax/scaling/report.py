"""Scaling-law report: markdown and PNG plots from a runs table and its fit document.

Plots (one panel per loss column): loss against compute with the compute frontier and the fitted
law; IsoFLOP profiles with their parabolas; N_opt(C) from Approaches 2 and 3; fitted against
observed loss; and the exponents of every loss column with their bootstrap intervals.
"""

from __future__ import annotations

import io
import json
import math
import os
import pathlib

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from fourm_jax.files import write_atomic
from fourm_jax.scaling import fit as fitting
from fourm_jax.scaling.table import Runs, TableError, load_runs

PANEL_COLUMNS = 3


def read_fit(path: str | os.PathLike) -> dict:
    """Loads a document written by `tools/scaling_laws.py fit`, checking its schema."""
    path = pathlib.Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise TableError(f"{path}: no such file") from None
    except json.JSONDecodeError as e:
        raise TableError(f"{path}: not valid JSON ({e.msg}, line {e.lineno})") from None
    if not isinstance(document, dict) or document.get("schema") != fitting.SCHEMA:
        raise TableError(f"{path}: not a fit document (expected \"schema\": {fitting.SCHEMA!r})")
    for key in ("columns", "flops_per_param_token", "fits"):
        if key not in document:
            raise TableError(f"{path}: fit document lacks the key {key!r}")
    return document


def runs_for_fit(table: str | os.PathLike, document: dict) -> Runs:
    """The runs table read with the columns and k that the fit used."""
    columns = document["columns"]
    return load_runs(table, loss_columns=columns["loss"], n_column=columns["n"], d_column=columns["d"],
                     flops_column=columns["flops"], flops_per_param_token=document["flops_per_param_token"])


def _panels(count: int, width: float = 4.2, height: float = 3.4):
    cols = min(count, PANEL_COLUMNS)
    rows = math.ceil(count / cols)
    figure = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = figure.subplots(rows, cols, squeeze=False).ravel()
    for extra in axes[count:]:
        extra.set_visible(False)
    return figure, axes[:count]


def _save(figure: Figure, path: pathlib.Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    write_atomic(path, buffer.getvalue())


def _frontier(c, loss):
    """Runs that reach a lower loss than every run with as much compute or less."""
    order = np.lexsort((loss, c))
    keep, best = [], np.inf
    for i in order:
        if loss[i] < best:
            keep.append(i)
            best = loss[i]
    return np.array(keep)


def _loss_vs_compute(runs: Runs, document: dict, path: pathlib.Path) -> None:
    k = document["flops_per_param_token"]
    figure, axes = _panels(len(runs.losses))
    c_grid = np.geomspace(runs.c.min() / 1.5, runs.c.max() * 1.5, 200)
    colours = np.log10(runs.n)
    for ax, (column, loss) in zip(axes, runs.losses.items(), strict=True):
        law = fitting.law_from_fit(document["fits"][column])
        points = ax.scatter(runs.c, loss, c=colours, cmap="viridis", s=18, zorder=3)
        front = _frontier(runs.c, loss)
        ax.plot(runs.c[front], loss[front], color="tab:red", lw=1.2, label="frontier (runs)")
        for size in np.geomspace(runs.n.min(), runs.n.max(), 5):
            ax.plot(c_grid, law.loss(size, c_grid / (k * size)), color="0.7", lw=0.7, zorder=1)
        n_opt, d_opt = law.optimal(c_grid, k)
        ax.plot(c_grid, law.loss(n_opt, d_opt), "k--", lw=1.2, label="fit, compute-optimal")
        ax.plot([], [], color="0.7", lw=0.7, label="fit at fixed N")
        ax.set(xscale="log", xlabel="training FLOPs C", ylabel=column, title=column,
               ylim=(0.97 * loss.min(), 1.03 * loss.max()))
        ax.legend(fontsize=7)
    figure.colorbar(points, ax=list(axes), label="log10 N")
    _save(figure, path)


def _isoflop(runs: Runs, document: dict, path: pathlib.Path) -> bool:
    columns = [c for c in runs.losses if "budgets" in document["fits"][c].get("approach2", {})]
    if not columns:
        return False
    k = document["flops_per_param_token"]
    figure, axes = _panels(2 * len(columns))
    labels = fitting.group_budgets(runs.c, document["options"]["budget_rtol"])
    for i, column in enumerate(columns):
        approach2 = document["fits"][column]["approach2"]
        profile, allocation = axes[2 * i], axes[2 * i + 1]
        loss = runs.losses[column]
        colours = iter(np.linspace(0, 1, labels.max() + 1))
        budgets = {round(math.log(b["C"]), 6): b for b in approach2["budgets"]}
        for label in np.unique(labels):
            members = labels == label
            colour = colormaps["plasma"](0.85 * next(colours))
            profile.scatter(runs.n[members], loss[members], color=colour, s=14)
            budget = budgets.get(round(math.log(float(np.exp(np.log(runs.c[members]).mean()))), 6))
            if budget is not None:
                x = np.linspace(np.log(runs.n[members].min()), np.log(runs.n[members].max()), 100)
                profile.plot(np.exp(x), np.polyval(budget["parabola"], x), color=colour, lw=1)
                profile.plot(budget["N_opt"], budget["loss_min"], "k*", ms=7)
        profile.set(xscale="log", xlabel="N", ylabel=column, title=f"IsoFLOP profiles: {column}")
        c = np.array([b["C"] for b in approach2["budgets"]])
        c_grid = np.geomspace(c.min() / 2, c.max() * 2, 100)
        allocation.scatter(c, [b["N_opt"] for b in approach2["budgets"]], color="k", s=16, zorder=3,
                           label="parabola minima")
        allocation.plot(c_grid, approach2["N_opt_coefficient"] * c_grid ** approach2["a"], "k-", lw=1,
                        label=f"Approach 2: a = {approach2['a']:.3f}")
        law = fitting.law_from_fit(document["fits"][column])
        allocation.plot(c_grid, law.optimal(c_grid, k)[0], "--", color="tab:blue", lw=1,
                        label=f"Approach 3: a = {law.a:.3f}")
        allocation.set(xscale="log", yscale="log", xlabel="C", ylabel="N_opt", title=f"N_opt(C): {column}")
        allocation.legend(fontsize=7)
    _save(figure, path)
    return True


def _fitted_vs_observed(runs: Runs, document: dict, path: pathlib.Path) -> None:
    figure, axes = _panels(len(runs.losses), width=3.6, height=3.4)
    for ax, (column, loss) in zip(axes, runs.losses.items(), strict=True):
        predicted = fitting.law_from_fit(document["fits"][column]).loss(runs.n, runs.d)
        points = ax.scatter(loss, predicted, s=14, c=np.log10(runs.c), cmap="viridis")
        low, high = min(loss.min(), predicted.min()), max(loss.max(), predicted.max())
        ax.plot([low, high], [low, high], "k-", lw=0.8)
        rms = document["fits"][column]["approach3"]["rms_log_residual"]
        ax.set(xlabel="observed loss", ylabel="fitted loss (Approach 3)")
        ax.set_title(f"{column}\nrms log residual {rms:.3g}", fontsize=9)
    figure.colorbar(points, ax=list(axes), label="log10 C")
    _save(figure, path)


def _exponents(document: dict, path: pathlib.Path) -> None:
    columns = list(document["fits"])
    figure = Figure(figsize=(max(4.5, 1.1 * len(columns) + 2), 3.6), layout="constrained")
    ax = figure.subplots()
    x = np.arange(len(columns))
    series = ((-0.2, "alpha", "tab:blue"), (0.0, "beta", "tab:orange"), (0.2, "a", "tab:green"))
    for offset, name, colour in series:
        values = np.array([document["fits"][c]["approach3"][name] for c in columns])
        intervals = [document["fits"][c]["approach3"]["intervals"].get(name) for c in columns]
        errors = np.array([[v - i[0], i[1] - v] if i else [0.0, 0.0]
                           for v, i in zip(values, intervals, strict=True)]).T
        ax.errorbar(x + offset, values, yerr=np.clip(errors, 0, None), fmt="o", color=colour, capsize=3,
                    label={"alpha": "alpha (N)", "beta": "beta (D)", "a": "a = N_opt exponent"}[name])
    ax.set_xticks(x, columns, rotation=30, ha="right", fontsize=8)
    confidence = 100 * document["options"]["confidence"]
    ax.set_ylabel("exponent")
    ax.set_title(f"Approach 3 exponents ({confidence:.0f}% bootstrap intervals)", fontsize=9)
    ax.legend(fontsize=7)
    _save(figure, path)


def _format(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def _with_interval(approach: dict, name: str) -> str:
    interval = approach.get("intervals", {}).get(name)
    text = _format(approach[name])
    return f"{text} [{_format(interval[0])}, {_format(interval[1])}]" if interval else text


def _markdown(runs: Runs, document: dict, figures: list[str]) -> str:
    k = document["flops_per_param_token"]
    confidence = document["options"]["confidence"]
    lines = [
        "# Scaling-law report", "",
        f"Runs: `{runs.path}` ({len(runs)} runs). N from column `{runs.columns['n']}`, D from "
        f"`{runs.columns['d'] or 'C/(k*N)'}`, C from `{runs.columns['flops'] or 'k*N*D'}`; "
        f"k = C/(N*D) = {k:.3g} ({document['flops_per_param_token_source']}).", "",
        f"Range covered: N {runs.n.min():.3g} to {runs.n.max():.3g}, D {runs.d.min():.3g} to "
        f"{runs.d.max():.3g}, C {runs.c.min():.3g} to {runs.c.max():.3g} FLOPs. The fits describe this "
        "range; extrapolating far beyond it is a guess.", "",
        "## Approach 3: L(N, D) = E + A/N^alpha + B/D^beta", "",
        f"Huber loss (delta {document['options']['huber_delta']:g}) on log loss with L-BFGS; "
        f"{100 * confidence:.0f}% bootstrap intervals over {document['options']['bootstrap']} resamples "
        "of the runs in brackets. a and b are the exponents of N_opt ~ C^a and D_opt ~ C^b.", "",
        "| loss | E | A | B | alpha | beta | a | b | rms log residual |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for column, result in document["fits"].items():
        a3 = result["approach3"]
        cells = [_with_interval(a3, name) for name in ("E", "A", "B", "alpha", "beta", "a", "b")]
        lines.append(f"| {column} | " + " | ".join(cells) + f" | {a3['rms_log_residual']:.3g} |")
    lines += ["", "Cross-check by variable projection (E, A, B by non-negative least squares for each "
              "alpha, beta):", "", "| loss | alpha | beta | a | agrees with Huber fit |",
              "|---|---|---|---|---|"]
    for column, result in document["fits"].items():
        vp, agreement = result["approach3"]["varpro"], result["approach3"]["agreement"]
        a = vp["beta"] / (vp["alpha"] + vp["beta"])
        largest = max(agreement["alpha_difference"], agreement["beta_difference"])
        verdict = "yes" if agreement["agree"] else f"**no** (differences up to {largest:.3g})"
        lines.append(f"| {column} | {vp['alpha']:.4g} | {vp['beta']:.4g} | {a:.4g} | {verdict} |")
    lines += ["", "## Approach 2: IsoFLOP profiles", "",
              "| loss | a (N_opt ~ C^a) | b (D_opt ~ C^b) | budgets used | Approach 3 a |",
              "|---|---|---|---|---|"]
    for column, result in document["fits"].items():
        a2 = result["approach2"]
        if "skipped" in a2:
            lines.append(f"| {column} | - | - | skipped: {a2['skipped']} | {result['approach3']['a']:.4g} |")
            continue
        used = f"{len(a2['budgets'])} (excluded {len(a2['excluded'])})"
        lines.append(f"| {column} | {_with_interval(a2, 'a')} | {_with_interval(a2, 'b')} | {used} | "
                     f"{result['approach3']['a']:.4g} |")
    lines += ["", "## Compute-optimal allocation (Approach 3)", "",
              "| loss | C | N_opt | D_opt | loss at optimum |", "|---|---|---|---|---|"]
    budgets = np.geomspace(runs.c.min(), runs.c.max() * 100, 4)
    for column, result in document["fits"].items():
        law = fitting.law_from_fit(result)
        for c in budgets:
            n_opt, d_opt = law.optimal(c, k)
            lines.append(f"| {column} | {c:.3g} | {n_opt:.3g} | {d_opt:.3g} | {law.loss(n_opt, d_opt):.4g} |")
    lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in figures] + [""]
    return "\n".join(lines)


def write_report(runs: Runs, document: dict, out_dir: str | os.PathLike) -> list[pathlib.Path]:
    """Writes report.md and its PNG plots into out_dir; returns the paths written."""
    out = pathlib.Path(out_dir)
    missing = [column for column in runs.losses if column not in document["fits"]]
    if missing:
        raise TableError(f"the fit document has no fit for loss column(s) {missing}")
    figures = ["loss_vs_compute.png"]
    _loss_vs_compute(runs, document, out / figures[0])
    if _isoflop(runs, document, out / "isoflop.png"):
        figures.append("isoflop.png")
    figures.append("fitted_vs_observed.png")
    _fitted_vs_observed(runs, document, out / figures[-1])
    figures.append("exponents.png")
    _exponents(document, out / figures[-1])
    write_atomic(out / "report.md", _markdown(runs, document, figures))
    return [out / "report.md"] + [out / name for name in figures]
