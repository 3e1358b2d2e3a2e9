"""4M forward+backward step: time, tokens/s, achieved FLOP/s and (on accelerators) MFU.

    python tools/bench.py model                                  # ml-4m's CPU reference setting
    python tools/bench.py model --heads both                     # grouped heads vs every head on every token
    python tools/bench.py model --variant fm_base_12e_12d_swiglu_nobias --dtype bfloat16 --batch-size 64

FLOPs are counted analytically (matmuls and attention of the tokens the step actually processes:
the kept encoder tokens, the kept decoder tokens, each output head on its own targets; backward =
2x forward). fourm_jax/scaling/flops.py is being written in parallel; until it lands the count
lives here.
"""

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from fourm_jax import modalities
from fourm_jax.model.config import ModelConfig, variant_config
from fourm_jax.model.example_batch import example_batch
from fourm_jax.model.fourm import FourM

# Dense bf16 peak FLOP/s per chip, for MFU.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "TPU v6": 918e12, "TPU v5 lite": 197e12,
              "TPU v5e": 197e12, "TPU v5": 459e12, "TPU v4": 275e12}


def add_arguments(parser):
    parser.add_argument("--variant", default="fm_tiny_6e_6d_gelu")
    parser.add_argument("--inputs", default="rgb@224,tok_rgb@224,caption")
    parser.add_argument("--outputs", default="tok_rgb@224,tok_depth@224,caption")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--target-tokens", type=int, default=128)
    parser.add_argument("--text-tokens", type=int, default=24,
                        help="tokens a sequence modality (caption) has per sample: a caption's length")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--scan-layers", type=int, default=1)
    parser.add_argument("--remat-policy", default="none")
    parser.add_argument("--head-chunk-size", type=int, default=128)
    parser.add_argument("--heads", choices=("grouped", "dense", "both"), default="grouped",
                        help="grouped: each head on its own tokens (the model); dense: every head on every "
                             "decoder token, masked (for comparison)")
    parser.add_argument("--repeats", type=int, default=5)


def forward_flops(config: ModelConfig, batch, num_enc: int, num_dec: int) -> float:
    """Matmul + attention FLOPs of one forward pass over `batch` (multiply-add = 2 FLOPs)."""
    d, f = config.dim, config.mlp_hidden_dim
    n = num_enc + config.num_register_tokens
    mlp = (6 if config.gated_mlp else 4) * d * f
    encoder_layer = n * (8 * d * d + mlp) + 4 * n * n * d
    decoder_layer = (num_dec * (8 * d * d + 4 * d * d + mlp) + 4 * n * d * d  # self q,k,v,o; cross q,o; kv
                     + 4 * num_dec * num_dec * d + 4 * num_dec * n * d)  # self and cross attention scores
    per_sample = (config.encoder_depth * encoder_layer + config.decoder_depth * decoder_layer
                  + 2 * n * d * d)  # decoder_proj_context
    size = next(iter(batch.values()))["tensor"].shape[0]
    flops = size * per_sample
    for name, d_m in batch.items():
        modality = modalities.get(name)
        inputs = min(int((~d_m["input_mask"]).sum()), size * num_enc)
        if name in config.domains_in and modality.kind is modalities.Kind.IMAGE_PIXELS:
            flops += 2 * inputs * modality.num_channels * modality.patch_size**2 * d
        if name in config.domains_in and modality.kind is modalities.Kind.SEQUENCE_EMBEDDING:
            flops += 2 * inputs * modality.embedding_dim * d
        if name in config.domains_out:
            targets = min(int((~d_m["target_mask"]).sum()), size * num_dec)
            flops += 2 * targets * d * modality.vocab_size
    return float(flops)


def _dense_loss(model: FourM, batch, num_enc, num_dec):
    """ml-4m's `mod` loss with every output head applied to every decoder token (masked)."""
    enc = model.select_encoder_tokens(batch, num_enc)
    dec = model.select_decoder_tokens(batch, num_dec)
    out = model.encode(enc.x + enc.emb, enc.mask)
    y = model.decode(dec.x + dec.emb, model.decoder_context(out, enc.emb), enc.mask, dec.attention_mask)
    losses = []
    for name in model.decoder_modalities(batch):
        logits = model.logits(name, y)
        rows = dec.mod_mask == modalities.get(name).id
        ce = jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, dec.target_ids[..., None], -1)[..., 0]
        losses.append(jnp.sum(jnp.where(rows, ce, 0.0)) / jnp.maximum(jnp.sum(rows), 1))
    return jnp.mean(jnp.stack(losses))


def _time_step(step, state, batch, repeats):
    """(compile + first step seconds, wall seconds per step, process CPU seconds per step)."""
    start = time.perf_counter()
    jax.block_until_ready(step(state, batch))
    compile_and_first = time.perf_counter() - start
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(step(state, batch))
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return compile_and_first, wall, cpu


def run(args) -> dict:
    inputs, outputs = tuple(args.inputs.split(",")), tuple(args.outputs.split(","))
    config = variant_config(args.variant, domains_in=inputs, domains_out=outputs, dtype=args.dtype,
                            scan_layers=bool(args.scan_layers), remat_policy=args.remat_policy,
                            head_chunk_size=args.head_chunk_size)
    num_enc, num_dec = args.input_tokens, args.target_tokens
    host_batch = example_batch(inputs, outputs, args.batch_size, num_enc, num_dec, seed=0,
                               text_tokens=args.text_tokens)
    batch = jax.tree.map(jnp.asarray, host_batch)
    # Gradients for parameters only (as a train step takes them), not for sin-cos buffers.
    graphdef, params, buffers = nnx.split(FourM(config, rngs=nnx.Rngs(0)), nnx.Param, ...)
    flops = 3 * forward_flops(config, host_batch, num_enc, num_dec)
    tokens = args.batch_size * (num_enc + num_dec)
    device = jax.devices()[0]
    peak = next((v for k, v in PEAK_FLOPS.items() if k in device.device_kind), None)
    losses = {"grouped": lambda p, b: nnx.merge(graphdef, p, buffers)(b, num_enc, num_dec)[0],
              "dense": lambda p, b: _dense_loss(nnx.merge(graphdef, p, buffers), b, num_enc, num_dec)}
    strategies = ("grouped", "dense") if args.heads == "both" else (args.heads,)
    results = {}
    for name in strategies:
        step = jax.jit(jax.value_and_grad(losses[name]))
        compile_s, times, cpu_times = _time_step(step, params, batch, args.repeats)
        median = statistics.median(times)
        # On a shared CPU, process CPU seconds show the work done when other jobs steal the cores.
        results[name] = dict(step_s_median=median, step_s_min=min(times), compile_and_first_step_s=compile_s,
                             process_cpu_s_median=statistics.median(cpu_times),
                             tokens_per_s=tokens / median, achieved_tflops=flops / median / 1e12,
                             mfu=flops / median / peak if peak and device.platform != "cpu" else None)
    return dict(variant=args.variant, inputs=inputs, outputs=outputs, batch_size=args.batch_size,
                input_tokens=num_enc, target_tokens=num_dec, text_tokens=args.text_tokens, dtype=args.dtype,
                scan_layers=config.scan_layers, remat_policy=config.remat_policy,
                head_chunk_size=config.head_chunk_size,
                parameters=int(sum(np.prod(v.shape) for v in jax.tree.leaves(params))),
                train_flops_per_step=flops, results=results)
