"""The trainer's step: time, tokens/s, MFU, peak device memory, and FSDP memory versus device count.

    python tools/bench.py train                                             # configs/demo.py
    python tools/bench.py train --config configs/4m7.py:B --override data.global_batch_size=8 \
        --override mesh.fsdp=-1 --override mesh.data=1 --fsdp-devices 1,2,4,8 --steps 3

The step is the one tools/train.py runs (fourm_jax.train.step, built from the run config on its
mesh) fed one synthetic batch with the config's token budgets (fourm_jax.model.example_batch), so
the numbers are the step's, not the data pipeline's. Peak memory: the devices' memory_stats where
the backend keeps them (GPU, TPU); on CPU, which keeps none, the compiled step's memory analysis
(per-device arguments, outputs and temporaries). FSDP: the per-device bytes of parameters plus
optimizer state on meshes data=D/n x fsdp=n, read from the shardings (nothing is allocated).
"""

import statistics
import time

import jax
import numpy as np

from fourm_jax import configs, sharding
from fourm_jax.model.example_batch import example_batch
from fourm_jax.scaling import hardware
from fourm_jax.train import step as step_lib
from fourm_jax.train.config import RunConfig
from fourm_jax.train.trainer import model_flops_per_step


def add_arguments(parser):
    parser.add_argument("--config", default="configs/demo.py", help="run config (configs/*.py[:arg])")
    parser.add_argument("--override", action="append", default=[],
                        help="config override field=value (repeatable), as tools/train.py's --config.field")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (after 2 untimed ones)")
    parser.add_argument("--fsdp-devices", default="",
                        help="comma-separated fsdp sizes for the per-device parameter+optimizer bytes")
    parser.add_argument("--skip-timing", action="store_true",
                        help="only the FSDP byte counts (any config size: nothing is allocated)")


def synthetic_batch(run: RunConfig, program: step_lib.TrainProgram, seed: int = 0) -> dict:
    """A global batch shaped like the pipeline's (step_lib.abstract_batch), masked to the budgets."""
    batch = example_batch(run.model.domains_in, run.model.domains_out, run.global_batch,
                          run.train.num_input_tokens, run.train.num_target_tokens, seed=seed)
    out = {}
    for name, arrays in program.abstract_batch.items():
        if name not in batch:
            raise ValueError(f"bench train: the batch has modality {name} that is neither a model input "
                             "nor an output")
        out[name] = {key: jax.device_put(np.asarray(batch[name][key]).reshape(spec.shape).astype(spec.dtype),
                                         spec.sharding)
                     for key, spec in arrays.items()}
    return out


def per_device_bytes(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest device's share)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        total += int(np.prod(shard)) * np.dtype(leaf.dtype).itemsize
    return total


def fsdp_bytes(config, sizes: list[int]) -> list[dict]:
    """Per-device parameter and optimizer-state bytes on data=D/n x fsdp=n meshes."""
    rows = []
    devices = jax.devices()
    for n in sizes:
        if len(devices) % n:
            raise ValueError(f"--fsdp-devices: {n} does not divide the {len(devices)} devices")
        run = RunConfig.from_config(configs.load(config[0], [*config[1], f"mesh.data={len(devices) // n}",
                                                             f"mesh.fsdp={n}", "mesh.tensor=1"]))
        program = step_lib.build_program(run, sharding.make_mesh(run.mesh))
        params = per_device_bytes(program.abstract_state.params)
        opt = per_device_bytes(program.abstract_state.opt_state)
        rows.append(dict(fsdp=n, param_bytes_per_device=params, opt_state_bytes_per_device=opt,
                         total_mib_per_device=round((params + opt) / 2**20, 2)))
    return rows


def _peak_memory(compiled) -> dict:
    stats = [d.memory_stats() for d in jax.local_devices()]
    if all(s and "peak_bytes_in_use" in s for s in stats):
        return dict(source="memory_stats", peak_bytes_per_device=max(s["peak_bytes_in_use"] for s in stats))
    analysis = compiled.memory_analysis()
    return dict(source="compiled memory_analysis (per device)",
                argument_bytes=analysis.argument_size_in_bytes, output_bytes=analysis.output_size_in_bytes,
                temp_bytes=analysis.temp_size_in_bytes,
                alias_bytes=analysis.alias_size_in_bytes,
                peak_estimate_bytes=analysis.argument_size_in_bytes + analysis.output_size_in_bytes
                + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes)


def timing(run: RunConfig, steps: int) -> dict:
    program = step_lib.build_program(run, sharding.make_mesh(run.mesh))
    started = time.perf_counter()
    compiled = program.train_step.lower(program.abstract_state, program.abstract_buffers,
                                        program.abstract_batch).compile()
    compile_s = time.perf_counter() - started
    state, buffers = program.init(jax.random.key(0)), program.init_buffers()
    batch = synthetic_batch(run, program)
    times = []
    for i in range(steps + 2):
        started = time.perf_counter()
        state, metrics = compiled(state, buffers, batch)
        jax.block_until_ready(metrics)
        if i >= 2:
            times.append(time.perf_counter() - started)
    best, median = min(times), statistics.median(times)
    params = sum(x.size for x in jax.tree.leaves(program.abstract_state.params))
    result = dict(params=int(params), global_batch=run.global_batch, tokens_per_step=run.tokens_per_step,
                  mesh=dict(program.mesh.shape), compile_s=round(compile_s, 2),
                  step_time_s_best=best, step_time_s_median=median,
                  tokens_per_s=run.tokens_per_step / best, final_loss=float(metrics["loss"]),
                  memory=_peak_memory(compiled))
    mfu = hardware.mfu(model_flops_per_step(run), best, list(program.mesh.devices.flat),
                       dtype=run.model.dtype)
    if mfu is not None:
        result["mfu"] = mfu
    return result


def run(args) -> dict:
    run_config = RunConfig.from_config(configs.load(args.config, args.override))
    result = dict(config=args.config, overrides=args.override)
    if not args.skip_timing:
        result.update(timing(run_config, args.steps))
    if args.fsdp_devices:
        sizes = [int(s) for s in args.fsdp_devices.split(",")]
        result["fsdp"] = fsdp_bytes((args.config, args.override), sizes)
    return result
