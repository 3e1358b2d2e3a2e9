"""4M masking mixture for the built-in scenes dataset, pretokenized at 64 px (tools/pretokenize.py).

    configs/mixtures/scenes.py       4M-7's all2all_rgb2all_a0.5 over the scenes modalities

Half of the examples see only RGB pixels (rgb@64) as input and predict everything else; the other
half draw inputs and targets from every modality with Dirichlet alpha 0.5. RGB pixels are never a
target. Scenes images are 8x8 = 64 tokens per modality, so the budgets are 64 / 64 tokens.
"""

import ml_collections

IMAGE_TOKENS = ("tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64")
SEQUENCES = ("caption", "det")


def _entry(input_alphas, target_alphas, keep=None):
    entry = dict(input_alphas=list(input_alphas), target_alphas=list(target_alphas))
    if keep is not None:
        entry["keep"] = list(keep)
    return ml_collections.ConfigDict(entry)


def get_config():
    alphas = {"rgb@64": _entry([1000.0, 0.5], [0.0, 0.0])}
    for name in IMAGE_TOKENS:
        alphas[name] = _entry([0.0, 0.5], [0.5, 0.5])
    for name in SEQUENCES:
        alphas[name] = _entry([0.0, 0.5], [0.5, 0.5], ["random"] * 2)
    config = ml_collections.ConfigDict()
    config.name = "scenes:all2all_rgb2all_a0.5"
    config.alphas = ml_collections.ConfigDict(alphas)
    config.sampling_weights = None
    config.input_tokens = 64
    config.target_tokens = 64
    config.min_input_tokens = None
    config.min_target_tokens = None
    return config
