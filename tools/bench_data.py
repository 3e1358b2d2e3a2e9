"""Input pipeline throughput: examples/s of the full pipeline with the 4M-7 mixture.

    python tools/bench.py data [--examples 8192] [--batch_size 256] [--workers 2] [--batches 40]
                               [--rgb] [--device] [--data_dir DIR]

Writes synthetic pre-tokenized 4M-7 records (token grids with ml-4m's vocabulary sizes, 4 crops,
aligned captions, boxes; with --rgb also a 256x320 JPEG for rgb@224; with --caption_ids the
captions as WordPiece ids) to a temporary directory (or reuses --data_dir), then times the
pipeline: read + decode, shared crop, caption and box tokenization (WordPiece), 4M-7 masking at
128/128 tokens, batching, in --workers processes; with --device also the transfer onto the local
devices as one global array. Without --rgb the mixture is 4M-7's with rgb@224 left out (its
alphas dropped), since pre-tokenized data carries no pixels. Also reports the single-core cost of
each stage per example. `examples_per_cpu_s` counts CPU time of the main process and its workers:
on a machine shared with other jobs it says what the pipeline costs, where wall-clock examples/s
says what it got.
"""

import argparse
import pathlib
import tempfile
import time

import jax
import numpy as np
import psutil

from fourm_jax import configs, modalities, sharding
from fourm_jax.data import pipeline, records, synthetic
from fourm_jax.text import tokenizer as text_tokenizer

REPO = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_VOCAB = REPO.parent / "shared" / "vocab" / "text_tokenizer_4m_wordpiece_30k.json"
MIXTURE = REPO / "configs" / "mixtures" / "4m7.py"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--examples", type=int, default=8192, help="synthetic records to write")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batches", type=int, default=40, help="batches timed (after warm-up)")
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--rgb", action="store_true", help="include rgb@224 pixels (JPEG records)")
    parser.add_argument("--caption_ids", action="store_true",
                        help="store captions as token ids (tokenized when written, not per step)")
    parser.add_argument("--device", action="store_true", help="also time the device transfer")
    parser.add_argument("--data_dir", help="reuse (or create) the synthetic records here")
    parser.add_argument("--vocab", default=str(DEFAULT_VOCAB), help="WordPiece vocabulary json")
    parser.add_argument("--mixture", default=f"{MIXTURE}:all2all_rgb2all_a0.5")


def mixture_config(spec: str, with_rgb: bool):
    mixture = configs.load(spec)
    if not with_rgb:
        del mixture.alphas["rgb@224"]
    return mixture


def pipeline_config(args, directory) -> pipeline.PipelineConfig:
    dataset = pipeline.DatasetConfig("synthetic_4m7", str(directory),
                                     masking=mixture_config(args.mixture, args.rgb))
    return pipeline.PipelineConfig(datasets=(dataset,), global_batch_size=args.batch_size,
                                   text_tokenizer=args.vocab, num_workers=args.workers)


def _cpu_seconds() -> float:
    """CPU time of this process and its live children (the Grain workers)."""
    me = psutil.Process()
    total = 0.0
    for process in [me, *me.children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def time_batches(iterator, batches: int, warmup: int, batch_size: int) -> dict:
    """Examples per second of wall time and per CPU-second (this process and its workers): on a
    machine shared with other jobs the second says what the pipeline costs."""
    for _ in range(warmup):
        jax.block_until_ready(next(iterator))
    start, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(batches):
        jax.block_until_ready(next(iterator))
    wall, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    examples = batches * batch_size
    return dict(examples_per_s=round(examples / wall, 1),
                examples_per_cpu_s=round(examples / cpu, 1), cpu_load=round(cpu / wall, 2))


def stage_costs(config: pipeline.PipelineConfig, directory, count: int = 512) -> dict:
    """Single-core microseconds per example for each stage, measured in this process."""
    outputs = pipeline.output_modalities(config)
    dataset = config.datasets[0]
    masker = pipeline._masker_for(dataset, outputs)
    specs = {name: modalities.get(name) for name in outputs}
    tokenizer = text_tokenizer.load_tokenizer(config.text_tokenizer)
    transform = pipeline.ExampleTransform(dataset, 0, masker.mixture.modalities, tokenizer, specs,
                                          False)
    source = records.open_dataset(directory, "train")
    rng = np.random.default_rng(0)
    indices = [int(i) for i in rng.integers(len(source), size=count)]
    timings = {}
    start = time.perf_counter()
    for i in indices:
        source._source.data_source[i]
    timings["read"] = time.perf_counter() - start
    start = time.perf_counter()
    decoded = [source[i] for i in indices]
    timings["decode"] = time.perf_counter() - start - timings["read"]
    start = time.perf_counter()
    prepared = [transform.prepare(record, rng) for record in decoded]
    timings["prepare_and_tokenize"] = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(0, count, 128):
        masker.mask_batch(prepared[i:i + 128], rng)
    timings["mask_batch"] = time.perf_counter() - start
    return {f"{stage}_us": round(seconds / count * 1e6, 1) for stage, seconds in timings.items()}


def run(args) -> dict:
    with tempfile.TemporaryDirectory() as scratch:
        name = "4m7" + ("_rgb" if args.rgb else "") + ("_caption_ids" if args.caption_ids else "")
        directory = pathlib.Path(args.data_dir or scratch) / name
        if not (directory / "dataset_info.json").exists():
            names = modalities.MODALITIES_4M7 if args.rgb else tuple(
                m for m in modalities.MODALITIES_4M7 if m != "rgb@224")
            synthetic.write_pretokenized(
                directory, args.examples, modalities=names, with_rgb=args.rgb,
                caption_tokenizer=text_tokenizer.load_tokenizer(args.vocab) if args.caption_ids
                else None, num_workers=args.workers)
        config = pipeline_config(args, directory)
        result = dict(examples=args.examples, batch_size=args.batch_size, workers=args.workers,
                      rgb=args.rgb, caption_ids=args.caption_ids, mixture=args.mixture,
                      modalities=list(pipeline.output_modalities(config)))
        result["stages_single_core"] = stage_costs(config, directory)
        host = iter(pipeline.host_dataset(config))
        result["host"] = time_batches(host, args.batches, args.warmup, args.batch_size)
        host.close()
        if args.device:
            device = iter(pipeline.build_dataset(config, sharding.make_mesh(dict(data=-1))))
            result["device"] = time_batches(device, args.batches, args.warmup, args.batch_size)
            device.close()
        return result
