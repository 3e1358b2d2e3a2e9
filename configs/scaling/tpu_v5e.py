"""The scenes study's design at real scale: 4M-7 on CC12M, on a TPU slice (e.g. v5e-64 or larger).

    python tools/scaling_laws.py sweep --config=configs/scaling/tpu_v5e.py --workdir=/mnt/shared/sweep \
        --multihost \
        --config.base.data.datasets.cc12m.path=data/cc12m --config.base.data.text_tokenizer=PATH.json \
        --report=reports/4m7_scaling

Every host of the slice runs the same command (the workdir on a filesystem all hosts share). It
trains one point at a time over the whole slice (each is an ordinary run of configs/4m7.py's recipe,
data-parallel, bfloat16, scanned layers). 5 model shapes from 17M to 353M non-embedding
parameters (width 384-1024, 4-12 blocks in the encoder and in the decoder, 64-wide heads) x 4
token budgets from 2.5B to 20B (ml-4m's B trains on 500B). The learning rate falls as
1/sqrt(width) from ml-4m's 1e-4 base rate at width 768 (B); warmup 2% of each run; evaluation once,
at the end, on the same held-out CC12M examples and masks for every run.

The grid costs 8.4e19 model FLOPs (analytic count; the largest point 2.3e19): on a v5e-256 at 40%
MFU (197 TFLOP/s per chip in bfloat16) about 1.2 hours of training plus compilation and
evaluation. Check a point's memory and step-time estimate with tools/aot_compile.py first.
"""

import pathlib

import ml_collections

from fourm_jax import configs

RECIPE = pathlib.Path(__file__).resolve().parents[1] / "4m7.py"
BATCH = 2048


def get_config():
    sweep = ml_collections.ConfigDict()
    sweep.base = configs.load(f"{RECIPE}:B")
    sweep.base.name = "4m7_scaling"
    sweep.base.data.global_batch_size = BATCH
    sweep.base.eval.every_steps = 10**9  # only at each run's end
    sweep.base.train.checkpoint_every = 2000
    sweep.models = dict(
        w384_l4=dict(dim=384, encoder_depth=4, decoder_depth=4, num_heads=6),
        w512_l6=dict(dim=512, encoder_depth=6, decoder_depth=6, num_heads=8),
        w640_l8=dict(dim=640, encoder_depth=8, decoder_depth=8, num_heads=10),
        w768_l10=dict(dim=768, encoder_depth=10, decoder_depth=10, num_heads=12),
        w1024_l12=dict(dim=1024, encoder_depth=12, decoder_depth=12, num_heads=16),
    )
    sweep.tokens = [2.5e9, 5e9, 10e9, 20e9]
    sweep.flops = []
    sweep.lr = dict(base_lr=1e-4, reference_dim=768, exponent=0.5)
    sweep.warmup_fraction = 0.02
    sweep.min_steps = 500
    return sweep
