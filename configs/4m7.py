"""4M-7 pre-training at B, L and XL with ml-4m's hyperparameters
(cfgs/default/4m/models/main/4m-{b,l,xl}_mod7_500b.yaml):

    python tools/train.py --config=configs/4m7.py:B --workdir=runs/4m7_B \
        --config.data.datasets.cc12m.path=data/cc12m --config.data.text_tokenizer=PATH.json

| size | model | global batch | blr -> lr | clip | skip non-finite | remat |
|---|---|---|---|---|---|---|
| B | fm_base_12e_12d_swiglu_nobias | 8192 | 1e-4 -> 3.2e-3 | - | no | - |
| L | fm_large_24e_24d_swiglu_nobias | 8192 | 1e-4 -> 3.2e-3 | 1e4 (logs the norm) | yes | full (ml-4m: -) |
| XL | fm_xlarge_24e_24d_swiglu_nobias | 8192 | 2e-5 -> 6.4e-4 | 3.0 | yes | full |

All: 128 input + 128 target tokens, 500B tokens (238,419 steps; ml-4m's epoch rounding gives
239,120), warmup 10B tokens (4,769 steps), AdamW (0.9, 0.95, eps 1e-8, wd 0.05), cosine to 0,
bfloat16 compute, output heads tied to the token embeddings (ml-4m's training models), the
`all2all_rgb2all_a0.5` masking mixture. Evaluation and checkpoints every ml-4m "epoch" (10M
examples = 1,220 steps); evaluation with 128/128 tokens on the centre crop (ml-4m's fixed eval).
Mesh: B data-parallel (ml-4m: DDP), L and XL fully sharded (ml-4m: FSDP). L rematerialises its
layers so that it fits a v5e chip's 16 GiB (tools/aot_compile.py: 19.2 GiB without, 4.6 GiB with
full remat on v5e-256; README "Compiling for TPU slices without a TPU"); pass
--config.model.remat_policy=none where HBM allows (v5p, v6e) to skip the recomputation, and on a
16x16 slice --config.mesh.data=16 --config.mesh.fsdp=16 (fsdp over all 256 chips leaves 4 `embed`
entries per chip, and the compiler then gathers the weights with all-reduces).

Data: ml-4m's pre-tokenized CC12M/COYO shards imported with tools/import_ml4m_shards.py (or any
dataset with these fields); the text tokenizer is ml-4m's WordPiece vocabulary
(text_tokenizer_4m_wordpiece_30k.json), which is not shipped here.
"""

import pathlib

from fourm_jax import configs, modalities
from fourm_jax.model.config import variant_config
from fourm_jax.train.config import defaults

MIXTURES = pathlib.Path(__file__).resolve().parent / "mixtures"
EPOCH_EXAMPLES = 10_000_000  # ml-4m's epoch_size: the evaluation and checkpoint interval

SIZES = {
    "B": dict(variant="fm_base_12e_12d_swiglu_nobias", base_lr=1e-4, clip_grad=0.0, skip_nonfinite=False,
              remat_policy="none", mesh=dict(data=-1, fsdp=1, tensor=1)),
    "L": dict(variant="fm_large_24e_24d_swiglu_nobias", base_lr=1e-4, clip_grad=1e4, skip_nonfinite=True,
              remat_policy="full", mesh=dict(data=1, fsdp=-1, tensor=1)),
    "XL": dict(variant="fm_xlarge_24e_24d_swiglu_nobias", base_lr=2e-5, clip_grad=3.0, skip_nonfinite=True,
               remat_policy="full", mesh=dict(data=1, fsdp=-1, tensor=1)),
}


def masking(spec: str, tokens: int | None = None):
    """A mixture config from configs/mixtures (`4m7.py[:arg]`), optionally with other budgets."""
    config = configs.load(str(MIXTURES / spec))
    if tokens is not None:
        config.input_tokens = config.target_tokens = tokens
    return config


def recipe(size: str, *, domains_in, domains_out, global_batch: int, tokens: int, datasets: dict,
           eval_datasets: dict, eval_batch: int):
    """The shared shape of the 4M pre-training recipes."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {sorted(SIZES)}")
    spec = SIZES[size]
    config = defaults()
    config.model = variant_config(spec["variant"], domains_in=tuple(domains_in),
                                  domains_out=tuple(domains_out), dtype="bfloat16",
                                  tie_output_embeddings=True, scan_layers=True,
                                  remat_policy=spec["remat_policy"]).to_config()
    config.mesh.update(spec["mesh"])
    config.data.update(global_batch_size=global_batch, modalities=tuple(sorted(domains_in)),
                       text_tokenizer="text_tokenizer_4m_wordpiece_30k.json", num_workers=8,
                       datasets=datasets)
    epoch_steps = EPOCH_EXAMPLES // global_batch
    config.eval.update(every_steps=epoch_steps, num_batches=8, num_input_tokens=128, num_target_tokens=128)
    config.eval.data = dict(global_batch_size=eval_batch, modalities=tuple(sorted(domains_in)),
                            shuffle=False, num_workers=2, datasets=eval_datasets)
    config.eval.data.text_tokenizer = config.data.get_ref("text_tokenizer")  # follows overrides
    config.train.update(num_input_tokens=tokens, num_target_tokens=tokens, total_tokens=500.0,
                        warmup_tokens=10.0, checkpoint_every=epoch_steps, log_every=50)
    config.optimizer.update(base_lr=spec["base_lr"], min_base_lr=0.0, weight_decay=0.05, b1=0.9, b2=0.95,
                            eps=1e-8, clip_grad=spec["clip_grad"], skip_nonfinite=spec["skip_nonfinite"])
    return config


def get_config(size: str = "B"):
    domains_in = modalities.MODALITIES_4M7
    domains_out = tuple(m for m in domains_in if m != "rgb@224")
    config = recipe(
        size, domains_in=domains_in, domains_out=domains_out, global_batch=8192, tokens=128,
        datasets=dict(cc12m=dict(path="data/cc12m", masking=masking("4m7.py"))),
        eval_datasets=dict(cc12m=dict(path="data/cc12m", split="validation", crop="center",
                                      masking=masking("4m7.py", tokens=128))),
        eval_batch=1024)
    config.name = f"4m7_{size}"
    return config
