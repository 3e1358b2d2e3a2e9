"""Masking throughput: examples/s of fourm_jax.masking on one core, for a mixture config.

Batch size 1 times `masker(example, rng)`; larger sizes time `masker.mask_batch(examples, rng)`.
Raw pixels are stacked by mask_batch like every other tensor: `--pixels uint8` passes them as
uint8 [H, W, 3] (4x less to copy than ml-4m's float32 [3, H, W]).
"""

import time

import numpy as np

from fourm_jax import configs, masking
from fourm_jax.modalities import Kind


def add_arguments(parser):
    parser.add_argument("--mixture", default="configs/mixtures/4m7.py",
                        help="mixture config (path.py[:arg])")
    parser.add_argument("--override", action="append", default=[],
                        help="dotted config override, e.g. input_tokens=256 (repeatable)")
    parser.add_argument("--examples", type=int, default=4096, help="examples per timed round")
    parser.add_argument("--batch-size", type=int, default=32,
                        help="examples per mask_batch call (1: masker(example, rng), one at a time)")
    parser.add_argument("--pixels", choices=["float32", "uint8"], default="uint8",
                        help="raw pixels as ml-4m's float32 [3, H, W] or uint8 [H, W, 3]")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds; the best is reported")
    parser.add_argument("--rng-per-example", action="store_true",
                        help="build a fresh numpy Generator per call, as a Grain random map does")
    parser.add_argument("--caption-tokens", type=int, default=33, help="caption length (tokens)")
    parser.add_argument("--det-boxes", type=int, default=2, help="boxes in the det sequence")


def synthetic_example(masker: masking.Masker, caption_tokens: int, det_boxes: int, rng,
                      pixels: str = "float32") -> dict:
    """Pre-tokenized inputs of the right shapes: token grids, a caption, boxes, pixels, embeddings."""
    example = {}
    for name in masker.mixture.modalities:
        spec = masker.specs[name]
        if spec.kind is Kind.IMAGE_TOKENS:
            example[name] = rng.integers(0, spec.vocab_size, spec.max_tokens).astype(np.int16)
        elif spec.kind is Kind.IMAGE_PIXELS and pixels == "uint8":
            example[name] = np.zeros((spec.input_size, spec.input_size, spec.num_channels), np.uint8)
        elif spec.kind is Kind.IMAGE_PIXELS:
            example[name] = np.zeros((spec.num_channels, spec.input_size, spec.input_size), np.float32)
        elif spec.kind is Kind.SEQUENCE_EMBEDDING:
            example[name] = rng.normal(size=(24, spec.embedding_dim)).astype(np.float32)
        elif name == "det":
            boxes = [[204 + 1000 * k + int(v) for k, v in enumerate(rng.integers(0, 1000, 4))] + [4253]
                     for _ in range(det_boxes)]
            example[name] = np.array(boxes, np.int64).ravel()
        elif name == "metadata":
            example[name] = [[1204 + k, 204 + int(v)] for k, v in enumerate(rng.integers(0, 999, 12))]
        else:
            example[name] = rng.integers(4284, spec.vocab_size, caption_tokens)
    return example


def run(args) -> dict:
    config = configs.load(args.mixture, args.override)
    masker = masking.Masker.from_config(config)
    example = synthetic_example(masker, args.caption_tokens, args.det_boxes, np.random.default_rng(0),
                                args.pixels)
    batch = [example] * args.batch_size
    rates = []
    for round_ in range(args.rounds):
        rng = np.random.default_rng(round_)
        start = time.process_time()
        for i in range(max(1, args.examples // args.batch_size)):
            if args.batch_size == 1:
                masker(example, np.random.default_rng(i) if args.rng_per_example else rng)
            else:
                masker.mask_batch(batch, np.random.default_rng(i) if args.rng_per_example else rng)
        calls = max(1, args.examples // args.batch_size)
        rates.append(calls * args.batch_size / (time.process_time() - start))
    return dict(mixture=config.name, input_tokens=config.input_tokens, target_tokens=config.target_tokens,
                batch_size=args.batch_size, pixels=args.pixels, rng_per_example=args.rng_per_example,
                examples_per_s_per_core=round(max(rates)), rounds=[round(r) for r in rates],
                note="CPU time of this process, best round")
