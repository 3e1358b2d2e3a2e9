"""Training metrics: TensorBoard event files (tensorboardX, no TensorFlow), a JSON-lines log, and a
progress line with throughput and ETA. Only process 0 writes.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import time
from collections.abc import Mapping

import jax


class MetricWriter:
    """Writes scalars to `<workdir>/tensorboard/` and `<workdir>/metrics.jsonl`.

    When a run resumes from step `resume_step`, JSON lines of later steps (written before the
    interruption and about to be recomputed) are dropped, so the log holds each step once.
    """

    def __init__(self, workdir: str | pathlib.Path, resume_step: int | None = None,
                 enabled: bool | None = None):
        self.enabled = jax.process_index() == 0 if enabled is None else enabled
        self.jsonl_path = pathlib.Path(workdir) / "metrics.jsonl"
        self._tb = None
        if not self.enabled:
            return
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.jsonl_path.exists():
            kept = [line for line in self.jsonl_path.read_text().splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            tmp = self.jsonl_path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(self.jsonl_path)
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(str(pathlib.Path(workdir) / "tensorboard"))
        self._jsonl = self.jsonl_path.open("a")

    def write(self, step: int, scalars: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in scalars.items()}
        for name, value in values.items():
            self._tb.add_scalar(tensorboard_tag(name), value, step)
        self._jsonl.write(json.dumps({"step": int(step), **values}) + "\n")
        self._jsonl.flush()

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()


def tensorboard_tag(name: str) -> str:
    """TensorBoard's tag alphabet (`loss/tok_rgb@224` -> `loss/tok_rgb_224`); JSONL keeps the name."""
    return re.sub(r"[^\w./-]", "_", name)


def read_jsonl(path: str | pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class Progress:
    """One line per report: step, loss, steps/s, tokens/s, ETA (from the rate since the last report)."""

    def __init__(self, total_steps: int, start_step: int = 0):
        self.total_steps = total_steps
        self._last = (start_step, time.perf_counter())

    def line(self, step: int, loss: float, tokens_per_step: int) -> str:
        now = time.perf_counter()
        last_step, last_time = self._last
        rate = (step - last_step) / max(now - last_time, 1e-9)
        self._last = (step, now)
        eta = (self.total_steps - step) / rate if rate > 0 else math.inf
        return (f"step {step}/{self.total_steps}  loss {loss:.4f}  {rate:.2f} steps/s  "
                f"{rate * tokens_per_step:,.0f} tokens/s  ETA {format_duration(eta)}")
