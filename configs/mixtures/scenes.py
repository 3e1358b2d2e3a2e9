"""4M masking mixture for the built-in scenes dataset, pretokenized at 64 px (tools/pretokenize.py).

    configs/mixtures/scenes.py       4M-7's all2all_rgb2all_a0.5 over the scenes modalities

Half of the examples see only RGB pixels (rgb@64) as input and predict everything else; the other
half draw inputs and targets from every modality with Dirichlet alpha 0.5. RGB pixels are never a
target. Scenes images are 8x8 = 64 tokens per modality, so the budgets are 64 / 64 tokens.
"""

from fourm_jax.masking import alphas_entry, mixture_config

IMAGE_TOKENS = ("tok_rgb@64", "tok_depth@64", "tok_normal@64", "tok_semseg@64")
SEQUENCES = ("caption", "det")


def get_config():
    alphas = {"rgb@64": alphas_entry([1000.0, 0.5], [0.0, 0.0])}
    for name in IMAGE_TOKENS:
        alphas[name] = alphas_entry([0.0, 0.5], [0.5, 0.5])
    for name in SEQUENCES:
        alphas[name] = alphas_entry([0.0, 0.5], [0.5, 0.5], ["random"] * 2)
    return mixture_config("scenes:all2all_rgb2all_a0.5", alphas, None, input_tokens=64, target_tokens=64)
