"""A first any-to-any scaling study on the built-in scenes dataset (64 px, pretokenized).

    make scaling-study        # builds and pretokenizes scenes, runs this sweep, fits, writes docs/
    python tools/scaling_laws.py sweep --config=configs/scaling/scenes_64.py --workdir runs/scaling_scenes

4 model shapes (width 48-128, 1-4 encoder and decoder blocks: 0.07M-1.9M non-embedding parameters)
x 3 token budgets (a factor 4 apart), sized to finish in about an hour on a 2-core CPU. Inputs and
targets: the four tokenized image modalities (8x8 tokens each), plus RGB pixels as an input; masked
as 4M-7 masks (half RGB-to-all, half all-to-all with Dirichlet alpha 0.5), 64 input / 64 target
tokens. Data: 4,000 training scenes with 2 crops each and 256 held-out scenes (make scaling-study
builds and pretokenizes them under data/scaling). The learning rate falls as 1/width from 4e-3 at
width 64 (Adam's usual width rule), with 5% warmup and cosine decay to a tenth. Every point is
evaluated once, at its end, on the same 256 held-out scenes with the same masks (centre crops, fixed
masking seed).

The range is tiny (a 27x spread in N, 4x in D): the fit describes these runs, not 4M at scale.
configs/scaling/tpu_v5e.py is the same study at real scale for a TPU slice.
"""

import ml_collections

from fourm_jax.masking import alphas_entry, mixture_config
from fourm_jax.train.config import defaults

IMAGE_TOKENS = ("tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64")
DATASET = dict(path="scenes_tok/64px", data_dir="data/scaling")
BATCH = 32
TOKENS = 64


def masking() -> ml_collections.ConfigDict:
    alphas = {"rgb@64": alphas_entry([1000.0, 0.5], [0.0, 0.0])}
    for name in IMAGE_TOKENS:
        alphas[name] = alphas_entry([0.0, 0.5], [0.5, 0.5])
    return mixture_config("scenes_image:all2all_rgb2all_a0.5", alphas, None, input_tokens=TOKENS,
                          target_tokens=TOKENS)


def base_run(dataset: dict = DATASET, batch: int = BATCH) -> ml_collections.ConfigDict:
    """The run config every point starts from (model shape, length and lr set per point)."""
    config = defaults()
    config.model.update(domains_in=("rgb@64",) + IMAGE_TOKENS, domains_out=IMAGE_TOKENS, image_size=64,
                        patch_size=8, scan_layers=False)
    config.data.update(global_batch_size=batch, num_workers=2,
                       datasets=dict(scenes=dict(dataset, masking=masking())))
    # Evaluated once, at each run's end (every_steps beyond any run's length).
    config.eval.update(every_steps=10**9, num_batches=256 // batch, num_input_tokens=TOKENS,
                       num_target_tokens=TOKENS)
    config.eval.data = dict(global_batch_size=batch, shuffle=False, seed=1234, datasets=dict(
        scenes=dict(dataset, split="validation", crop="center", masking=masking())))
    config.train.update(num_input_tokens=TOKENS, num_target_tokens=TOKENS, log_every=25,
                        checkpoint_every=250, keep_checkpoints=1)
    config.optimizer.update(clip_grad=1.0, skip_nonfinite=True)
    return config


def get_config():
    sweep = ml_collections.ConfigDict()
    sweep.base = base_run()
    sweep.models = dict(
        w48_l1=dict(dim=48, encoder_depth=1, decoder_depth=1, num_heads=3),
        w64_l2=dict(dim=64, encoder_depth=2, decoder_depth=2, num_heads=4),
        w96_l3=dict(dim=96, encoder_depth=3, decoder_depth=3, num_heads=6),
        w128_l4=dict(dim=128, encoder_depth=4, decoder_depth=4, num_heads=8),
    )
    tokens_per_step = BATCH * 2 * TOKENS
    sweep.tokens = [steps * tokens_per_step for steps in (75, 150, 300)]
    sweep.flops = []
    # lr = 4e-3 * 64 / dim peak (the optimizer scales base_lr by batch / 256), floor a tenth of it.
    sweep.lr = dict(base_lr=4e-3 * 256 / BATCH, reference_dim=64, exponent=1.0)
    sweep.base.optimizer.update(base_lr=sweep.lr.base_lr, min_base_lr=sweep.lr.base_lr / 10)
    sweep.warmup_fraction = 0.05
    sweep.min_steps = 20
    return sweep
