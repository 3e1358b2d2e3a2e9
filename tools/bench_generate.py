"""Generation speed: MaskGIT images/s and autoregressive caption tokens/s (random weights).

    python tools/bench.py generate                       # ml-4m's CPU reference setting
    python tools/bench.py generate --batch-sizes 1,8,64 --steps 8

Setting (issue 7): fm_tiny_6e_6d_gelu with encoder rgb@224, tok_rgb@224, tok_depth@224, caption and
decoder tok_rgb@224, tok_depth@224, caption; float32; temperature 1, no top-k/top-p.
- maskgit: tok_rgb@224 (given) -> tok_depth@224, cosine schedule of `steps` steps; images/s.
- caption: tok_rgb@224 -> caption of `caption_tokens` tokens (an empty target with one slot more;
  with random weights the final sentinel is practically never drawn, so every row decodes all of
  them); tokens/s = batch x tokens / time.
Times are the median of `repeats` runs after one compiling run (compile time reported apart); the
process CPU time is reported too (on a shared machine it measures the work, not the waiting).
ml-4m's sampler on the 2-core CPU machine (torch CPU, 2 threads, medians) is in REFERENCE.
"""

import functools

import numpy as np
from flax import nnx
from timing import rate_entry, time_runs

from fourm_jax import modalities
from fourm_jax.generate import (
    GenerationSampler,
    build_chained_generation_schedules,
    init_empty_target_modality,
)
from fourm_jax.model.config import variant_config
from fourm_jax.model.fourm import FourM

DOMAINS_IN = ("rgb@224", "tok_rgb@224", "tok_depth@224", "caption")
DOMAINS_OUT = ("tok_rgb@224", "tok_depth@224", "caption")
# ml-4m's GenerationSampler on the 2-core CPU machine (torch CPU, 2 threads, medians).
REFERENCE = {"maskgit_8": {1: 0.80, 8: 1.00}, "maskgit_32": {1: 0.22, 8: 0.26}, "caption": {1: 25.0, 8: 60.0}}


def add_arguments(parser):
    parser.add_argument("--variant", default="fm_tiny_6e_6d_gelu")
    parser.add_argument("--batch-sizes", default="1,8")
    parser.add_argument("--steps", default="8,32", help="MaskGIT step counts")
    parser.add_argument("--caption-tokens", type=int, default=32)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--which", default="maskgit,caption")
    parser.add_argument("--shape-buckets", type=int, default=4, help="GenerationSampler(shape_buckets=...)")


def _condition(batch_size: int, rng: np.random.Generator) -> dict:
    vocab = modalities.get("tok_rgb@224").vocab_size
    tokens = rng.integers(0, vocab, (batch_size, 196)).astype(np.int32)
    return {"tok_rgb@224": dict(tensor=tokens, input_mask=np.zeros((batch_size, 196), bool),
                                target_mask=np.ones((batch_size, 196), bool))}


def run(args) -> dict:
    config = variant_config(args.variant, domains_in=DOMAINS_IN, domains_out=DOMAINS_OUT, dtype=args.dtype)
    sampler = GenerationSampler(FourM(config, rngs=nnx.Rngs(0)), shape_buckets=args.shape_buckets)
    rng = np.random.default_rng(0)
    results = {}
    which = args.which.split(",")
    for batch_size in map(int, args.batch_sizes.split(",")):
        if "maskgit" in which:
            for steps in map(int, args.steps.split(",")):
                mod_dict = _condition(batch_size, rng)
                init_empty_target_modality(mod_dict, "tok_depth@224", batch_size, 196)
                schedule = build_chained_generation_schedules(
                    ["tok_rgb@224"], ["tok_depth@224"], [196], ["maskgit"], [steps], ["cosine"], [1.0],
                    ["constant"], [1.0], ["constant"])
                run_once = functools.partial(sampler.generate, mod_dict, schedule, seed=1)
                timing = time_runs(run_once, args.repeats)
                name = f"maskgit_{steps}"
                results[f"{name}_batch{batch_size}"] = rate_entry(
                    "images/s", batch_size, *timing, REFERENCE.get(name, {}).get(batch_size))
        if "caption" in which:
            n = args.caption_tokens
            mod_dict = init_empty_target_modality(_condition(batch_size, rng), "caption", batch_size, n + 1)
            schedule = build_chained_generation_schedules(
                ["tok_rgb@224"], ["caption"], [n], ["autoregressive"], [1], ["cosine"], [1.0], ["constant"],
                [1.0], ["constant"])
            _, trace = sampler.generate(mod_dict, schedule, seed=2, return_trace=True)
            decoded = trace["generated"]["caption"]
            timing = time_runs(functools.partial(sampler.generate, mod_dict, schedule, seed=2), args.repeats)
            tokens = decoded.shape[1] - 1  # column 0 is the start sentinel
            reference = REFERENCE["caption"].get(batch_size) if n == 32 else None
            results[f"caption_{n}_batch{batch_size}"] = rate_entry(
                "tokens/s", batch_size * tokens, *timing, reference, tokens=tokens)
    return dict(variant=args.variant, dtype=args.dtype, shape_buckets=args.shape_buckets, results=results)
