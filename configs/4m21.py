"""4M-21 pre-training at B, L and XL with ml-4m's hyperparameters
(cfgs/default/4m/models/main/4m-{b,l,xl}_mod21_500b.yaml), initialised from the 4M-7 run of the
same size as ml-4m does (`--finetune`: every parameter whose ml-4m key contains `.pos_emb` is
dropped, the new modalities start from their fresh initialisation, the optimizer starts fresh):

    python tools/train.py --config=configs/4m21.py:L --workdir=runs/4m21_L \
        --config.train.init_from=runs/4m7_L --config.data.text_tokenizer=PATH.json \
        --config.data.datasets.cc12m.path=... --config.data.datasets.coyo700m.path=... \
        --config.data.datasets.c4.path=...

| size | model | global batch | blr -> lr | clip | skip non-finite | remat |
|---|---|---|---|---|---|---|
| B | fm_base_12e_12d_swiglu_nobias | 4096 | 1e-4 -> 1.6e-3 | - | no | full (ml-4m: -) |
| L | fm_large_24e_24d_swiglu_nobias | 4096 | 1e-4 -> 1.6e-3 | 1e4 (logs the norm) | yes | full |
| XL | fm_xlarge_24e_24d_swiglu_nobias | 4096 | 2e-5 -> 3.2e-4 | 3.0 | yes | full |

All: 256 input + 256 target tokens, 500B tokens (238,419 steps; ml-4m: 239,218), warmup 10B
tokens (4,769 steps), the data mix cc12m 0.6 / coyo700m 0.2 / c4 0.2 with the masking of
configs/mixtures/4m21.py (C4 text as `caption`, span-corrupted), evaluation with 128/128 tokens
(ml-4m's fixed eval keeps 128/128 for these models too). `train.init_from` defaults to
runs/4m7_<size>, the workdir configs/4m7.py's README command trains; any fourm_jax params
checkpoint (e.g. a converted ml-4m 4M-7 release) works.
"""

import importlib.util
import pathlib

from fourm_jax import modalities

_spec = importlib.util.spec_from_file_location("_recipes_4m7",
                                               pathlib.Path(__file__).resolve().parent / "4m7.py")
fm7 = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fm7)

# 4M-21 differs from 4M-7 in clipping / skipping (same as 4M-7 for B and XL) and remat for B and L.
REMAT = {"B": "full", "L": "full", "XL": "full"}  # B: 256+256 tokens do not fit v5e without (AOT)
SKIP_IN_DOMAINS_OUT = ("rgb@224", "t5_caption")  # no decoder embedding / never a target


def get_config(size: str = "B"):
    domains_in = modalities.MODALITIES_4M21
    domains_out = tuple(m for m in domains_in if m not in SKIP_IN_DOMAINS_OUT)
    datasets = dict(
        cc12m=dict(path="data/cc12m", weight=0.6, masking=fm7.masking("4m21.py:cc12m")),
        coyo700m=dict(path="data/coyo700m", weight=0.2, masking=fm7.masking("4m21.py:coyo700m")),
        c4=dict(path="data/c4", weight=0.2, masking=fm7.masking("4m21.py:c4"), fields=dict(caption="text")),
    )
    config = fm7.recipe(
        size, domains_in=domains_in, domains_out=domains_out, global_batch=4096, tokens=256,
        datasets=datasets,
        eval_datasets=dict(cc12m=dict(path="data/cc12m", split="validation", crop="center",
                                      masking=fm7.masking("4m21.py:cc12m", tokens=128))),
        eval_batch=1024)
    config.name = f"4m21_{size}"
    config.model.remat_policy = REMAT[size]
    config.train.init_from = f"runs/4m7_{size}"
    config.train.init_drop = [".pos_emb"]
    return config
