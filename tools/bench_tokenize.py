"""Tokenizer throughput: images/s of encode and of decode for a spec, batch-sharded over all devices.

    python tools/bench.py tokenize --spec tokenizers/scenes_rgb.py --batch-size 256
    python tools/bench.py tokenize --ml4m path/to/4M_tokenizers_semseg_4k_224-448 --image-size 224

Randomly initialised weights unless --ml4m loads a released tokenizer (the numbers do not depend on
the weights). Inputs are random model inputs of the spec's size.
"""

import time

import jax
import numpy as np

from fourm_jax.tokenizers import VQVAE, compiled, ml4m, specs


def add_arguments(parser):
    parser.add_argument("--spec", default="tokenizers/scenes_rgb.py", help="tokenizer spec file")
    parser.add_argument("--override", action="append", default=[], help="spec override a.b=value")
    parser.add_argument("--ml4m", default=None, help="an ml-4m tokenizer directory instead of a spec")
    parser.add_argument("--image-size", type=int, default=None, help="input size (default: the spec's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")


def _random_input(config, batch: int, size: int, rng: np.random.Generator) -> np.ndarray:
    if config.modality == "semseg":
        return rng.integers(0, config.n_labels, (batch, size, size), dtype=np.int32)
    if config.modality == "vector":
        return rng.standard_normal((batch, config.n_channels), dtype=np.float32)
    return rng.standard_normal((batch, size, size, config.n_channels), dtype=np.float32)


def _best_rate(fn, args, batch: int, iters: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(iters):
            out = fn(*args)
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - start)
    return batch * iters / best


def run(args) -> dict:
    if args.ml4m:
        tokenizer, variables = ml4m.load(args.ml4m)
        size = args.image_size or tokenizer.config.image_size
    else:
        spec = specs.load(args.spec, args.override)
        tokenizer = VQVAE(spec.tokenizer)
        variables = tokenizer.init(jax.random.key(0))
        size = args.image_size or spec.config.image_size
    config = tokenizer.config
    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    variables = compiled.replicate(variables, mesh)
    x = jax.device_put(_random_input(config, args.batch_size, size, np.random.default_rng(0)),
                       compiled.batch_sharding(mesh))
    encode = compiled.encode_fn(tokenizer, mesh)
    start = time.perf_counter()
    tokens = jax.block_until_ready(encode(variables, x))
    result = dict(spec=args.ml4m or args.spec, modality=config.modality, image_size=size,
                  batch_size=args.batch_size, tokens_per_image=int(np.prod(tokens.shape[1:])),
                  parameters=int(sum(a.size for a in jax.tree.leaves(variables["params"]))),
                  encode_compile_s=round(time.perf_counter() - start, 2),
                  encode_images_per_s=round(_best_rate(encode, (variables, x), args.batch_size, args.iters,
                                                       args.repeats), 1))
    if config.decoder is not None:
        decode = compiled.decode_fn(tokenizer, mesh)
        start = time.perf_counter()
        jax.block_until_ready(decode(variables, tokens))
        result["decode_compile_s"] = round(time.perf_counter() - start, 2)
        rate = _best_rate(decode, (variables, tokens), args.batch_size, args.iters, args.repeats)
        result["decode_images_per_s"] = round(rate, 1)
    return result
