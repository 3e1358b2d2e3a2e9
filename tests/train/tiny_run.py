"""The smallest training run, for tests: a 32-wide, one-layer fm_test_tiny (unscanned) on
synthetic pre-tokenized token grids (fourm_jax.data.synthetic), 4M masking, 24/24 tokens.

    --config=tests/train/tiny_run.py --config.data.datasets.tiny.path=DIR   # DIR: write_pretokenized
"""

from fourm_jax.masking import alphas_entry, mixture_config
from fourm_jax.model.config import variant_config
from fourm_jax.train.config import defaults

MODALITIES = ("tok_depth@224", "tok_semseg@224")


def masking():
    alphas = {name: alphas_entry([1.0, 0.5], [0.5, 1.0]) for name in MODALITIES}
    return mixture_config("tiny", alphas, None, input_tokens=24, target_tokens=24)


def get_config():
    config = defaults()
    config.name = "tiny"
    config.model = variant_config("fm_test_tiny_gelu", domains_in=MODALITIES, domains_out=MODALITIES,
                                  scan_layers=False, dim=32, num_heads=2, encoder_depth=1,
                                  decoder_depth=1).to_config()
    config.data.global_batch_size = 8
    config.data.host_prefetch = 1
    config.data.device_prefetch = 1
    config.data.datasets = dict(tiny=dict(path="", masking=masking()))
    config.eval.update(every_steps=4, num_batches=2, num_input_tokens=24, num_target_tokens=24)
    config.eval.data = dict(global_batch_size=8, shuffle=False, seed=1,
                            datasets=dict(tiny=dict(path="", crop="center", masking=masking())))
    config.eval.data.datasets.tiny.path = config.data.datasets.tiny.get_ref("path")
    # A constant learning rate (no warmup, min = peak): runs cut short and resumed longer are the
    # same run (the multi-host test relies on it).
    config.train.update(num_input_tokens=24, num_target_tokens=24, total_steps=8, warmup_steps=0,
                        log_every=1, checkpoint_every=3)
    config.optimizer.update(base_lr=0.05, min_base_lr=0.05, clip_grad=1.0, skip_nonfinite=True)
    return config
