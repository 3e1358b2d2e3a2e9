"""Tokenizer throughput: images/s of encode and of decode for a spec, batch-sharded over all devices;
with --pretokenize, images/s of tools/pretokenize.py end to end.

    python tools/bench.py tokenize --spec tokenizers/scenes_rgb.py --batch-size 256
    python tools/bench.py tokenize --ml4m path/to/4M_tokenizers_semseg_4k_224-448 --image-size 224
    python tools/bench.py tokenize --pretokenize [--tokenizers scenes_64] [--examples 1024] [--n-crops 4]

Randomly initialised weights unless --ml4m loads a released tokenizer (the numbers do not depend on
the weights). Inputs are random model inputs of the spec's size.

--pretokenize renders --examples 64 px scenes into a temporary directory (or reads --data-dir's
scenes/64px) and pretokenizes them with the given tokenizers (default: the four shipped scenes
tokenizers; random ones from tokenizers/scenes_*.py when those are not built): reading, K crops +
flips per image, encoding every modality and writing the shards. Compilation is excluded; images/s
counts source images (each giving K crops in every modality).
"""

import pathlib
import tempfile
import time

import jax
import numpy as np
import pretokenize as pretokenize_tool  # tools/pretokenize.py (bench.py puts tools/ on the path)

from fourm_jax.data import pretokenize, records, scenes_dataset
from fourm_jax.tokenizers import VQVAE, artifacts, compiled, ml4m, specs

SCENES_SPECS = [f"tokenizers/scenes_{m}.py" for m in ("rgb", "depth", "normal", "semseg")]


def add_arguments(parser):
    parser.add_argument("--spec", default="tokenizers/scenes_rgb.py", help="tokenizer spec file")
    parser.add_argument("--override", action="append", default=[], help="spec override a.b=value")
    parser.add_argument("--ml4m", default=None, help="an ml-4m tokenizer directory instead of a spec")
    parser.add_argument("--image-size", type=int, default=None, help="input size (default: the spec's)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats; the best is reported")
    parser.add_argument("--pretokenize", action="store_true", help="time pretokenization instead")
    parser.add_argument("--tokenizers", default="scenes_64", help="(--pretokenize) as tools/pretokenize.py")
    parser.add_argument("--examples", type=int, default=1024, help="(--pretokenize) scenes to render")
    parser.add_argument("--data-dir", default=None, help="(--pretokenize) read its scenes/64px instead")
    parser.add_argument("--n-crops", type=int, default=4, help="(--pretokenize) crops per image")


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


def _pretokenize_jobs(names: str) -> tuple[list[pretokenize.Job], str]:
    """The named tokenizer artifacts, or random ones from the scenes specs when they are missing."""
    try:
        return pretokenize_tool.jobs(names), names
    except FileNotFoundError:
        jobs = []
        for path in SCENES_SPECS:
            spec = specs.load(path)
            tok = VQVAE(spec.tokenizer)
            jobs.append(pretokenize.Job(spec.config.field, artifacts.token_modality(spec.config), tok,
                                        tok.init(jax.random.key(0))))
        return jobs, "random tokenizers from " + ", ".join(SCENES_SPECS)


def run_pretokenize(args) -> dict:
    jobs, loaded = _pretokenize_jobs(args.tokenizers)
    pretokenizer = pretokenize.Pretokenizer(jobs, n_crops=args.n_crops, batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        if args.data_dir:
            source_dir = scenes_dataset.dataset_dir(args.data_dir, 64)
        else:
            source_dir = scenes_dataset.build(tmp, num_train=args.examples, num_validation=0, progress=False)
        source = records.open_dataset(source_dir, "train")
        warmup = [source[i] for i in range(-(-pretokenizer.batch_size // args.n_crops))]
        start = time.perf_counter()
        jax.block_until_ready(pretokenizer.tokenize(warmup, "train", 0)[0][jobs[0].output])
        compile_s = time.perf_counter() - start
        wall, cpu = time.perf_counter(), time.process_time()
        out = pretokenizer.write(lambda split: source, ["train"], pathlib.Path(tmp) / "out", progress=False)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        written = len(records.open_dataset(out, "train"))
    return dict(tokenizers=loaded, outputs=[job.output for job in jobs], examples=written,
                n_crops=args.n_crops, batch_size=pretokenizer.batch_size, compile_s=round(compile_s, 1),
                seconds=round(wall, 1), images_per_s=round(written / wall, 1),
                crops_per_s=round(written * args.n_crops / wall, 1),
                images_per_cpu_s=round(written / cpu, 1))


def run(args) -> dict:
    if args.pretokenize:
        return run_pretokenize(args)
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
