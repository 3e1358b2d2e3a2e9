"""Timing shared by the speed benchmarks. Imports nothing but the standard library, so scripts that
run without jax (tools/ml4m_speed.py under torch) use it too."""

import statistics
import time


def time_runs(run, repeats: int, sync=lambda: None) -> tuple[float, float, float]:
    """(first run seconds, compiling included; median wall seconds; median process CPU seconds) of
    run() over `repeats` runs after the first. sync() waits for work still queued (a GPU stream)."""
    start = time.perf_counter()
    run()
    sync()
    first = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        sync()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return first, statistics.median(wall), statistics.median(cpu)


def rate_entry(unit: str, items: int, first: float, seconds: float, cpu: float,
               reference: float | None = None, **extra) -> dict:
    """One result: items per second of wall time and of process CPU time (the work, whatever else
    runs on the machine), against ml-4m's CPU figure from issue 7 when there is one."""
    entry = dict(unit=unit, rate=round(items / seconds, 3), rate_per_cpu_second=round(items / cpu, 3),
                 seconds=round(seconds, 4), cpu_seconds=round(cpu, 4), first_run_seconds=round(first, 2),
                 **extra)
    if reference:
        entry |= dict(ml4m_cpu=reference, speedup_vs_ml4m_cpu=round(entry["rate"] / reference, 2))
    return entry
