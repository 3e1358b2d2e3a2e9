"""A tiny 4M trained on the built-in `scenes` dataset on a CPU (the run of `make demo`).

    python tools/build_scenes.py --data_dir data                                  # scenes/64px
    python tools/train.py --config=configs/demo.py --workdir=runs/demo            # text + RGB only
    python tools/train.py --config=configs/demo.py:tok_rgb@64,tok_depth@64 ...    # + token modalities

The argument lists the token modalities the data holds (tools/pretokenize.py output under
data/scenes_tok/64px, made with the shipped tokenizers in tokenizers/scenes_64/); without it the
run reads the raw scenes/64px dataset. Inputs: RGB pixels (rgb@64), caption, boxes (det) and the
token modalities; targets: caption, det and the token modalities, masked as configs/mixtures/scenes.py
masks (half the examples RGB-to-all, half all-to-all with Dirichlet alpha 0.5), 32 input / 32
target tokens. Text is tokenized with ml-4m's WordPiece vocabulary (`data.text_tokenizer`, by
default the copy in ../shared/vocab beside the checkout). A 64-wide 2+2-layer model
(fm_test_tiny_gelu, output heads tied to the token embeddings: the 30k-word text heads are most of
its parameters), batch 8, 1,500 steps, one device (two CPU cores gain nothing from simulated
devices).
"""

import pathlib

from fourm_jax.masking import alphas_entry, mixture_config
from fourm_jax.model.config import variant_config
from fourm_jax.train.config import defaults

TOKEN_MODALITIES = ("tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64")
SEQUENCES = ("caption", "det")
TOKENS = 32
VOCAB = (pathlib.Path(__file__).resolve().parents[2] / "shared" / "vocab"
         / "text_tokenizer_4m_wordpiece_30k.json")


def masking(token_modalities, tokens: int):
    """configs/mixtures/scenes.py's rgb2all / all2all components over the modalities present."""
    alphas = {"rgb@64": alphas_entry([1000.0, 0.5], [0.0, 0.0])}
    for name in token_modalities:
        alphas[name] = alphas_entry([0.0, 0.5], [0.5, 0.5])
    for name in SEQUENCES:
        alphas[name] = alphas_entry([0.0, 0.5], [0.5, 0.5], ["random"] * 2)
    return mixture_config("demo:rgb2all_all2all_a0.5", alphas, None, input_tokens=tokens,
                          target_tokens=tokens)


def get_config(token_modalities: str = ""):
    tokens = tuple(name for name in token_modalities.split(",") if name)
    unknown = sorted(set(tokens) - set(TOKEN_MODALITIES))
    if unknown:
        raise ValueError(f"configs/demo.py: unknown token modalities {unknown}; "
                         f"choose from {TOKEN_MODALITIES}")
    tokens = tuple(name for name in TOKEN_MODALITIES if name in tokens)  # registry order
    config = defaults()
    config.name = "demo"
    config.model = variant_config("fm_test_tiny_gelu", domains_in=("rgb@64", *tokens, *SEQUENCES),
                                  domains_out=(*tokens, *SEQUENCES), scan_layers=False,
                                  tie_output_embeddings=True).to_config()
    config.mesh.update(data=1, fsdp=1, tensor=1)
    path = "scenes_tok/64px" if tokens else "scenes/64px"
    scenes = dict(path=path, data_dir="data", masking=masking(tokens, TOKENS))
    config.data.update(global_batch_size=8, text_tokenizer=str(VOCAB), num_workers=1,
                       datasets=dict(scenes=scenes))
    config.eval.update(every_steps=250, num_batches=4, num_input_tokens=TOKENS, num_target_tokens=TOKENS)
    config.eval.data = dict(global_batch_size=8, shuffle=False, num_workers=0,
                            datasets=dict(scenes=dict(scenes, split="validation", crop="center")))
    # The held-out split follows overrides of the training data's vocabulary, directory and path.
    config.eval.data.text_tokenizer = config.data.get_ref("text_tokenizer")
    config.eval.data.datasets.scenes.data_dir = config.data.datasets.scenes.get_ref("data_dir")
    config.eval.data.datasets.scenes.path = config.data.datasets.scenes.get_ref("path")
    config.train.update(num_input_tokens=TOKENS, num_target_tokens=TOKENS, total_steps=1500,
                        warmup_steps=100, log_every=25, checkpoint_every=250, keep_checkpoints=2)
    config.optimizer.update(base_lr=1.6e-2, min_base_lr=1.6e-3, clip_grad=1.0, skip_nonfinite=True)
    return config
