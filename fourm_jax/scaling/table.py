"""Tables of training runs (CSV or JSON lines) for scaling-law fits, and atomic file writes.

A table has one row per run. Any table works, ours or published: the caller names the column of
parameters N, of training tokens D and/or of training FLOPs C, and the loss columns. Our sweeps
write these columns (one name each, so fits need no options):

    run                     the run's name
    params                  N without embeddings (fourm_jax.scaling.flops.param_counts().non_embedding)
    params_with_embeddings  N with embeddings
    tokens                  D: encoder + decoder tokens seen in training
    flops                   C: analytic training FLOPs (flops.train_flops_per_step(...).total x steps)
    wall_time_s             training wall time
    loss, loss/<modality>   held-out loss, in total and per target modality (e.g. loss/tok_rgb@224)

When the table lacks D, D = C / (k·N); when it lacks C, C = k·N·D; when it has both, k is estimated
as the median of C / (N·D) (about 3 for 4M: each token meets the encoder or the decoder).
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import json
import math
import os
import pathlib

import numpy as np

DEFAULT_COLUMNS = {"n": "params", "d": "tokens", "flops": "flops"}
NAME_COLUMNS = ("run", "name")


class TableError(ValueError):
    """A table that cannot be fitted; the message names the file, row or column."""


def read_rows(path: str | os.PathLike) -> tuple[list[dict], list[int]]:
    """Rows of a CSV file (header line first) or a JSON-lines file (one object per line; the
    format follows the suffix .csv / .jsonl / .json / .ndjson), and each row's line number."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise TableError(f"{path}: no such file")
    text = path.read_text()
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        if not reader.fieldnames:
            raise TableError(f"{path}: empty CSV file (expected a header line)")
        rows, lines = [], []
        for row in reader:
            if None in row:
                raise TableError(f"{path}: line {reader.line_num} has more fields than the header")
            rows.append(row)
            lines.append(reader.line_num)
        return rows, lines
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        rows, lines = [], []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TableError(f"{path}: line {number} is not valid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise TableError(f"{path}: line {number} is not a JSON object")
            rows.append(row)
            lines.append(number)
        return rows, lines
    raise TableError(f"{path}: unknown table format {path.suffix!r}; expected .csv or .jsonl")


@dataclasses.dataclass(frozen=True)
class Runs:
    """Validated numbers of a runs table: N, D, C and one array per loss column (one row per run)."""

    path: str
    names: tuple[str, ...]
    n: np.ndarray
    d: np.ndarray
    c: np.ndarray
    losses: dict[str, np.ndarray]
    columns: dict[str, str | None]  # which table column gave n, d and flops (None: derived)
    flops_per_param_token: float
    flops_per_param_token_source: str

    def __len__(self) -> int:
        return len(self.n)

    def subset(self, index: np.ndarray) -> Runs:
        return dataclasses.replace(self, names=tuple(self.names[i] for i in index), n=self.n[index],
                                   d=self.d[index], c=self.c[index],
                                   losses={k: v[index] for k, v in self.losses.items()})


def _row_label(path, line, row) -> str:
    for key in NAME_COLUMNS:
        if row.get(key) not in (None, ""):
            return f"{path}: line {line} (run {row[key]!r})"
    return f"{path}: line {line}"


def _positive_column(path, rows, lines, column) -> np.ndarray:
    values = []
    for row, line in zip(rows, lines, strict=True):
        raw = row.get(column)
        where = f"{_row_label(path, line, row)}, column {column!r}"
        if raw is None or (isinstance(raw, str) and not raw.strip()):
            raise TableError(f"{where}: value is missing")
        if isinstance(raw, bool):
            raise TableError(f"{where}: expected a number, got {raw!r}")
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise TableError(f"{where}: expected a number, got {raw!r}") from None
        if not math.isfinite(value) or value <= 0:
            raise TableError(f"{where}: expected a positive finite number, got {raw!r}")
        values.append(value)
    return np.asarray(values, dtype=np.float64)


def _all_columns(rows) -> list[str]:
    columns = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return list(columns)


def match_loss_columns(patterns: list[str], columns: list[str], path: str) -> list[str]:
    """Loss columns named by `patterns` (exact names or shell-style globs such as 'loss/*')."""
    selected = []
    for pattern in patterns:
        matched = [c for c in columns if c == pattern or fnmatch.fnmatchcase(c, pattern)]
        if not matched:
            raise TableError(f"{path}: no loss column matches {pattern!r}; the table has columns: "
                             f"{', '.join(columns)}")
        selected += [c for c in matched if c not in selected]
    return selected


def load_runs(path: str | os.PathLike, *, loss_columns: list[str], n_column: str | None = None,
              d_column: str | None = None, flops_column: str | None = None,
              flops_per_param_token: float = 6.0) -> Runs:
    """Reads and validates a runs table.

    Columns named explicitly must exist. Left as None, N defaults to `params`, and D / C to
    `tokens` / `flops` when the table has them; at least one of D and C must be available.
    flops_per_param_token (k) derives the missing one of D and C; with both present, k is
    estimated from the table instead. Every used value must be a positive finite number.
    """
    path = str(path)
    rows, lines = read_rows(path)
    if not rows:
        raise TableError(f"{path}: the table has no rows")
    columns = _all_columns(rows)
    if not flops_per_param_token > 0:
        raise TableError(f"flops_per_param_token must be positive, got {flops_per_param_token!r}")

    def resolve(given, role, description):
        name = given if given is not None else DEFAULT_COLUMNS[role]
        if name in columns:
            return name
        if given is not None or role == "n":
            raise TableError(f"{path}: there is no {description} column {name!r}; the table has "
                             f"columns: {', '.join(columns)}")
        return None

    n_col = resolve(n_column, "n", "N (parameters)")
    d_col = resolve(d_column, "d", "D (tokens)")
    c_col = resolve(flops_column, "flops", "C (FLOPs)")
    if d_col is None and c_col is None:
        raise TableError(f"{path}: the table needs a D (tokens) or a C (FLOPs) column; it has "
                         f"neither {DEFAULT_COLUMNS['d']!r} nor {DEFAULT_COLUMNS['flops']!r} (columns: "
                         f"{', '.join(columns)}); name one")
    for column in [n_col, d_col, c_col]:
        if column is not None:
            missing = [line for row, line in zip(rows, lines, strict=True) if column not in row]
            if missing:
                raise TableError(f"{path}: column {column!r} is missing on line {missing[0]}")
    selected = match_loss_columns(loss_columns, columns, path)

    n = _positive_column(path, rows, lines, n_col)
    d = _positive_column(path, rows, lines, d_col) if d_col else None
    c = _positive_column(path, rows, lines, c_col) if c_col else None
    if d is None:
        d, k_source = c / (flops_per_param_token * n), "given"
    elif c is None:
        c, k_source = flops_per_param_token * n * d, "given"
    else:
        flops_per_param_token = float(np.median(c / (n * d)))
        k_source = "estimated: median of C/(N*D) over the table"
    names = []
    for row, line in zip(rows, lines, strict=True):
        label = next((row[k] for k in NAME_COLUMNS if row.get(k) not in (None, "")), f"line {line}")
        names.append(str(label))
    return Runs(path=path, names=tuple(names), n=n, d=d, c=c,
                losses={col: _positive_column(path, rows, lines, col) for col in selected},
                columns={"n": n_col, "d": d_col, "flops": c_col},
                flops_per_param_token=flops_per_param_token,
                flops_per_param_token_source=k_source)
