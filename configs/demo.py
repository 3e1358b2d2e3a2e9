"""A tiny 4M trained on the built-in `scenes` dataset on a CPU (the demo's run).

    python tools/build_scenes.py --data_dir data                          # scenes/64px
    python tools/train.py --config=configs/demo.py --workdir=runs/demo    # resumes when rerun

Inputs: RGB pixels (the 64 px renders, resized to 224 as rgb@224 expects), caption, boxes (det),
metadata and colour palette; targets: the four text modalities, masked as 4M-7 masks (half the
examples RGB-to-all, half all-to-all, Dirichlet alpha 0.5), 48 input / 48 target tokens. Text is
tokenized with ml-4m's WordPiece vocabulary (`data.text_tokenizer`, by default the copy in
../shared/vocab beside the checkout). A 64-wide 2+2-layer model (fm_test_tiny_gelu, output heads
tied to the token embeddings: the 30k-word text heads are most of its 8M parameters), batch 16,
2,000 steps. Once
pre-tokenized scenes modalities exist (tools/pretokenize.py), add them to MODALITIES.
"""

import pathlib

import ml_collections

from fourm_jax.model.config import variant_config
from fourm_jax.train.config import defaults

INPUTS = ("rgb@224", "caption", "det", "metadata", "color_palette")
TARGETS = ("caption", "det", "metadata", "color_palette")
VOCAB = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "vocab"
         / "text_tokenizer_4m_wordpiece_30k.json")


def masking(tokens: int):
    """4M-7's rgb2all / all2all (alpha 0.5) components over the demo's modalities."""
    alphas = {"rgb@224": dict(input_alphas=[1000.0, 0.5], target_alphas=[0.0, 0.0])}
    for name in TARGETS:
        keep = ["binary"] * 2 if name == "color_palette" else ["random"] * 2
        alphas[name] = dict(input_alphas=[0.0, 0.5], target_alphas=[0.5, 0.5], keep=keep)
    return ml_collections.ConfigDict(dict(alphas=alphas, sampling_weights=None, input_tokens=tokens,
                                          target_tokens=tokens, min_input_tokens=None,
                                          min_target_tokens=None))


def get_config():
    config = defaults()
    config.name = "demo"
    config.model = variant_config("fm_test_tiny_gelu", domains_in=INPUTS, domains_out=TARGETS,
                                  scan_layers=False, tie_output_embeddings=True).to_config()
    scenes = dict(path="scenes/64px", data_dir="data", masking=masking(48))
    config.data.update(global_batch_size=16, text_tokenizer=str(VOCAB), num_workers=2,
                       datasets=dict(scenes=scenes))
    config.eval.update(every_steps=250, num_batches=4, num_input_tokens=48, num_target_tokens=48)
    config.eval.data = dict(global_batch_size=16, shuffle=False,
                            datasets=dict(scenes=dict(scenes, split="validation", crop="center")))
    # The held-out split follows overrides of the training data's vocabulary and directory.
    config.eval.data.text_tokenizer = config.data.get_ref("text_tokenizer")
    config.eval.data.datasets.scenes.data_dir = config.data.datasets.scenes.get_ref("data_dir")
    config.train.update(num_input_tokens=48, num_target_tokens=48, total_steps=2000, warmup_steps=100,
                        log_every=25, checkpoint_every=250, keep_checkpoints=2)
    config.optimizer.update(base_lr=1.6e-2, min_base_lr=1.6e-3, clip_grad=1.0, skip_nonfinite=True)
    return config
