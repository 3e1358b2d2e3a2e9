"""Ahead-of-time compilation of a run's train step for a TPU slice, on any machine.

libtpu describes a slice's devices without the hardware (`jax.experimental.topologies`), so the
real train step (fourm_jax/train/step.py) can be lowered and compiled for, say, `v5e:16x16` on a
CPU machine. `aot_report(run, topology)` does that and reads what the compiled program says:

  memory      per device: arguments (state, buffers, the batch shard), outputs, the part of the
              outputs aliased to donated arguments, temporaries, generated code; their sum
              (every temporary live at once) and the compiler's peak after buffer reuse, against
              the HBM the compiler says a program may use. The peak decides whether it fits: the
              compiler refuses a program above it, and that is reported with its figures
  FLOPs       XLA's cost analysis per device, which counts each while-loop body once (a scanned
              stack of layers shows one layer; the output heads' data-dependent chunk loops one
              chunk), and the analytic count of fourm_jax/scaling/flops.py, which is exact for the
              model's matmuls and is the MFU numerator
  traffic     HBM bytes and bytes sent over ICI per device, from the optimized HLO with every loop
              at its trip count (fourm_jax/train/hlo.py)
  step time   libtpu's cost analysis gives an `optimal_seconds` only for loop-free programs; for
              the train step it reports none (a negative sentinel). The estimate is then a
              roofline: max(hardware FLOPs / peak, HBM bytes / HBM bandwidth, ICI bytes / ICI
              egress bandwidth) per device, a lower bound that assumes perfect overlap. MFU and
              tokens/s follow from it (so they are upper bounds).

Nothing is allocated or run; libtpu (the `tpu` extra) must be installed.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib.util
import math
import os
import pathlib
import re
import tempfile
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fourm_jax import sharding
from fourm_jax.scaling import flops as flops_lib
from fourm_jax.scaling import hardware
from fourm_jax.train import hlo
from fourm_jax.train import step as step_lib
from fourm_jax.train.config import RunConfig

GIB = 2**30
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
# The TPU compiler's refusal: "... required for HLO temporaries (37.91G) exceeds available HBM (15.75G)".
_HBM_REFUSAL = re.compile(r"\(([\d.]+)([KMGT]?)i?B?\) exceeds available HBM \(([\d.]+)([KMGT]?)i?B?\)")


class AotError(RuntimeError):
    """A slice that cannot be described or a program that cannot be compiled (not memory)."""


def libtpu_available() -> bool:
    return importlib.util.find_spec("libtpu") is not None


def run_config(config: ml_collections.ConfigDict) -> RunConfig:
    """The validated run of `config`, for compiling only. No data is read, so a text tokenizer file
    missing on this machine is replaced by an empty placeholder: the model config's vocabulary
    sizes alone fix the program's shapes; `train.init_from` (initial values, not shapes) is dropped."""
    config = config.copy_and_resolve_references()
    config.train.init_from = ""
    with tempfile.TemporaryDirectory() as tmp:
        placeholder = pathlib.Path(tmp) / "text_tokenizer_placeholder.json"
        placeholder.touch()
        for section in (config.get("data"), config.get("eval", {}).get("data")):
            path = section.get("text_tokenizer") if section is not None else None
            if isinstance(path, str) and path and not pathlib.Path(path).is_file():
                section.text_tokenizer = str(placeholder)
        return RunConfig.from_config(config)


def topology_devices(topology: str) -> list[jax.Device]:
    """The devices of a TPU slice named like `v5e:16x16` or `v5p:4x4x4` (libtpu's topology names)."""
    if not libtpu_available():
        raise AotError("AOT compilation for TPU needs libtpu: install the `tpu` extra "
                       "(pip install -e '.[tpu]')")
    from jax.experimental import topologies

    # Describing a slice touches no chip: let libtpu load beside another process that holds its
    # lock file (one using a local TPU, or any process that loaded libtpu on this machine).
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    try:
        return list(topologies.get_topology_desc(topology, platform="tpu").devices)
    except Exception as error:  # libtpu raises JaxRuntimeError / ValueError with its own text
        raise AotError(f"topology {topology!r}: libtpu cannot describe it ({error}); names look like "
                       "v5e:16x16, v5p:4x4x4, v6e:16x16") from None


def _bytes(number: str, unit: str) -> float:
    return float(number) * _UNITS[unit]


def available_hbm(device: jax.Device) -> tuple[float | None, str]:
    """(bytes of HBM a program may use on `device`, where the figure comes from).

    Asked of the compiler: it refuses a program with a 256 GiB argument and names the HBM
    available. Falls back to the chip's capacity from fourm_jax/scaling/hardware.py.
    """
    mesh = Mesh(np.array([device]), ("x",))
    probe = jax.ShapeDtypeStruct((2**36,), jnp.float32, sharding=NamedSharding(mesh, PartitionSpec()))
    try:
        jax.jit(lambda x: x * 2.0).lower(probe).compile()
    except Exception as error:  # the compiler's RESOURCE_EXHAUSTED
        match = _HBM_REFUSAL.search(str(error))
        if match:
            return _bytes(match.group(3), match.group(4)), "compiler"
    capacity = hardware.hbm_bytes(device.device_kind, getattr(device, "num_cores", None))
    return capacity, "chip table" if capacity is not None else "unknown"


@dataclasses.dataclass(frozen=True)
class Compiled:
    program: step_lib.TrainProgram
    compiled: Any  # jax.stages.Compiled, or None when the compiler refused it for lack of HBM
    seconds: float
    refusal: str = ""  # the compiler's out-of-memory message


def compile_train_step(run: RunConfig, devices: list[jax.Device]) -> Compiled:
    """Lowers and compiles the run's train step for `devices` (a mesh from run.mesh)."""
    try:
        mesh = sharding.make_mesh(run.mesh, devices)
    except ValueError as error:
        raise AotError(str(error)) from None
    program = step_lib.build_program(run, mesh)
    started = time.perf_counter()
    lowered = program.train_step.lower(program.abstract_state, program.abstract_buffers,
                                       program.abstract_batch)
    try:
        compiled = lowered.compile()
    except Exception as error:
        if "RESOURCE_EXHAUSTED" in str(error) or _HBM_REFUSAL.search(str(error)):
            return Compiled(program, None, time.perf_counter() - started, str(error))
        raise
    return Compiled(program, compiled, time.perf_counter() - started)


def _memory(compiled, available: float | None) -> dict[str, Any]:
    stats = compiled.memory_analysis()
    out = {
        "arguments_bytes": stats.argument_size_in_bytes,
        "outputs_bytes": stats.output_size_in_bytes,
        "aliased_bytes": stats.alias_size_in_bytes,
        "temporaries_bytes": stats.temp_size_in_bytes,
        "generated_code_bytes": stats.generated_code_size_in_bytes,
    }
    out["total_bytes"] = (out["arguments_bytes"] + out["outputs_bytes"] - out["aliased_bytes"]
                          + out["temporaries_bytes"] + out["generated_code_bytes"])
    peak = getattr(stats, "peak_memory_in_bytes", 0)
    out["xla_peak_bytes"] = peak if peak > 0 else None
    out["hbm_bytes"] = available
    # The sum holds every temporary live at once; buffer assignment reuses memory, and the
    # compiler's peak (what it checks against HBM, refusing programs above it) can be lower.
    out["fits"] = available is None or (out["xla_peak_bytes"] or out["total_bytes"]) <= available
    return out


def _loops(loops: tuple[hlo.Loop, ...]) -> list[dict[str, Any]]:
    counts = collections.Counter(loop.trip_count for loop in loops)
    return [{"trip_count": trip, "loops": n}
            for trip, n in sorted(counts.items(), key=lambda item: (item[0] is None, item[0] or 0))]


def _analytic_flops(run: RunConfig) -> flops_lib.StepFlops:
    return flops_lib.train_flops_per_step(run.model, batch_size=run.global_batch,
                                          num_encoder_tokens=run.train.num_input_tokens,
                                          num_decoder_tokens=run.train.num_target_tokens,
                                          remat=run.model.remat_policy == "full")


def aot_report(run: RunConfig, topology: str) -> dict[str, Any]:
    """Compiles the run's train step for `topology` and reports memory, FLOPs, traffic and the
    estimated step time per device (see the module docstring). `report["memory"]["fits"]` says
    whether the program fits HBM; when the compiler refused it, `memory` holds its figures."""
    devices = topology_devices(topology)
    device = devices[0]
    cores = getattr(device, "num_cores", None)
    available, hbm_source = available_hbm(device)
    result = compile_train_step(run, devices)
    mesh = result.program.mesh
    batch_shards = math.prod(mesh.shape[a] for a in dict(run.sharding_rules).get("batch", ()))
    report: dict[str, Any] = {
        "config": run.name, "topology": topology, "device_kind": device.device_kind,
        "devices": len(devices), "cores_per_device": cores, "mesh": dict(mesh.shape),
        "remat_policy": run.model.remat_policy, "scan_layers": run.model.scan_layers,
        "global_batch": run.global_batch, "accum_steps": run.train.accum_steps,
        "per_device_batch": run.global_batch / batch_shards / run.train.accum_steps,
        "tokens_per_step": run.tokens_per_step, "compile_seconds": round(result.seconds, 1),
        "hbm_source": hbm_source,
    }
    if result.compiled is None:
        match = _HBM_REFUSAL.search(result.refusal)
        report["memory"] = {"fits": False, "hbm_bytes": _bytes(*match.group(3, 4)) if match else available,
                            "required_bytes": _bytes(*match.group(1, 2)) if match else None,
                            "compiler_message": result.refusal.strip().splitlines()[0][:500]}
        return report
    compiled = result.compiled
    report["memory"] = _memory(compiled, available)
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    analytic = _analytic_flops(run)
    model_flops = analytic.forward + analytic.backward
    traffic = hlo.step_traffic(compiled.as_text())
    report["flops"] = {
        "analytic_model_per_step": model_flops,
        "analytic_model_per_device": model_flops / len(devices),
        "analytic_remat_per_device": analytic.remat / len(devices),
        "xla_per_device": cost.get("flops"),
        "xla_loops": _loops(traffic.loops),
    }
    report["traffic"] = {
        "hbm_bytes_per_device": traffic.hbm_bytes,
        "xla_bytes_accessed_per_device": cost.get("bytes accessed"),
        "ici_bytes_per_device": traffic.ici_bytes,
    }
    peak = hardware.peak_flops(device.device_kind, "bfloat16", cores)
    bandwidth = hardware.hbm_bandwidth(device.device_kind, cores)
    ici = hardware.ici_bandwidth(device.device_kind, cores)
    optimal = cost.get("optimal_seconds")
    times = {"compiler_s": optimal if optimal is not None and optimal > 0 else None}
    if peak and bandwidth:
        times["compute_s"] = (model_flops + analytic.remat) / len(devices) / peak
        times["hbm_s"] = traffic.hbm_bytes / bandwidth
        times["ici_s"] = sum(traffic.ici_bytes.values()) / (ici / 2) if ici else None
        terms = {k: v for k, v in times.items() if k in ("compute_s", "hbm_s", "ici_s") and v is not None}
        times["bound"] = max(terms, key=terms.get).removesuffix("_s")
        times["roofline_s"] = max(terms.values())
    report["step_time"] = times
    estimate = times["compiler_s"] or times.get("roofline_s")
    if estimate:
        report["step_time_s"] = estimate
        report["step_time_source"] = "compiler" if times["compiler_s"] else "roofline"
        report["mfu"] = model_flops / estimate / (peak * len(devices)) if peak else None
        report["tokens_per_s"] = run.tokens_per_step / estimate
    return report


def _gib(value) -> str:
    return "?" if value is None else f"{value / GIB:.2f}"


def format_report(report: dict[str, Any]) -> str:
    """The report as the lines tools/aot_compile.py prints."""
    mesh = " ".join(f"{axis}={size}" for axis, size in report["mesh"].items())
    lines = [
        f"{report['config']} on {report['topology']}: {report['devices']} x {report['device_kind']} "
        f"({report['cores_per_device']} TensorCore(s) per device), mesh {mesh}, remat "
        f"{report['remat_policy']}{', scanned layers' if report['scan_layers'] else ''}",
        f"  batch {report['global_batch']} ({report['per_device_batch']:g} per device per micro-batch, "
        f"{report['accum_steps']} micro-batch(es)), {report['tokens_per_step']:,} tokens per step; "
        f"compiled in {report['compile_seconds']:.1f} s",
    ]
    memory = report["memory"]
    hbm = f"{_gib(memory['hbm_bytes'])} GiB HBM ({report['hbm_source']})"
    if "total_bytes" not in memory:
        lines.append(f"memory per device: DOES NOT FIT: the compiler needs {_gib(memory['required_bytes'])} "
                     f"GiB, {hbm} available")
        lines.append(f"  compiler: {memory['compiler_message']}")
        return "\n".join(lines)
    lines += [
        "memory per device (GiB):",
        f"  arguments {_gib(memory['arguments_bytes'])}, outputs {_gib(memory['outputs_bytes'])}, "
        f"aliased to donated arguments {_gib(memory['aliased_bytes'])}, temporaries "
        f"{_gib(memory['temporaries_bytes'])}, generated code {_gib(memory['generated_code_bytes'])}",
        f"  sum {_gib(memory['total_bytes'])}"
        + ("" if memory["xla_peak_bytes"] is None else f", compiler's peak {_gib(memory['xla_peak_bytes'])}")
        + f" of {hbm}: " + ("fits" if memory["fits"] else "DOES NOT FIT"),
    ]
    flops = report["flops"]
    loops = ", ".join(f"{item['loops']} x {item['trip_count'] or 'data-dependent'}"
                      for item in flops["xla_loops"])
    lines += [
        "FLOPs per step:",
        f"  analytic (model matmuls, forward + backward) {flops['analytic_model_per_step']:.4g} = "
        f"{flops['analytic_model_per_device']:.4g} per device; rematerialisation "
        f"+{flops['analytic_remat_per_device']:.4g} per device",
        f"  XLA cost analysis {flops['xla_per_device']:.4g} per device, counting each while-loop body "
        f"once (loops x trip count: {loops or 'none'})",
    ]
    traffic = report["traffic"]
    ici = ", ".join(f"{kind} {value / 1e9:.2f}" for kind, value in traffic["ici_bytes_per_device"].items())
    lines.append(f"traffic per device per step (GB): HBM {traffic['hbm_bytes_per_device'] / 1e9:.2f} "
                 f"(XLA's bytes accessed, loops once: {traffic['xla_bytes_accessed_per_device'] / 1e9:.2f}); "
                 f"ICI sent {ici or 'none'}")
    times = report["step_time"]
    lines.append("step time: " + (f"compiler estimate {times['compiler_s'] * 1e3:.1f} ms"
                                  if times["compiler_s"]
                                  else "libtpu's cost analysis gives no estimate for this program"))
    if "roofline_s" in times:
        terms = ", ".join(f"{name} {times[name + '_s'] * 1e3:.1f} ms" for name in ("compute", "hbm", "ici")
                          if times.get(name + "_s") is not None)
        lines.append(f"  roofline (lower bound, perfect overlap): {times['roofline_s'] * 1e3:.1f} ms, "
                     f"{times['bound']}-bound ({terms})")
    if "step_time_s" in report:
        mfu = "" if report["mfu"] is None else f"MFU {100 * report['mfu']:.1f}%, "
        lines.append(f"  => {mfu}{report['tokens_per_s'] / 1e6:.2f}M tokens/s "
                     f"(from the {report['step_time_source']} estimate)")
    return "\n".join(lines)
