"""4M-7 masking mixtures, from ml-4m's cfgs/default/4m/alphas_mixture/main (alphas per component).

    configs/mixtures/4m7.py                       all2all_rgb2all_a0.5, the 4M-7 pre-training mix
    configs/mixtures/4m7.py:all2all_rgb2dense_a0.5    caption/det never targets in the rgb2x half
    configs/mixtures/4m7.py:all2allmix_rgb2all_capbias  six components (ml-4m's assumed COYO mix)

Fields: alphas[modality] = {input_alphas, target_alphas, keep (sequences)}, one value per
component; sampling_weights (None: uniform); input_tokens / target_tokens (4M-7: 128 / 128),
with optional min_input_tokens / min_target_tokens to draw the counts per example.
"""

from fourm_jax.masking import alphas_entry, mixture_config

IMAGE_TOKENS = ("tok_rgb@224", "tok_depth@224", "tok_semseg@224", "tok_normal@224", "tok_clip@224")
SEQUENCES = ("caption", "det")



def _rgb2x_all2all(sequence_targets_in_rgb2x: float):
    """Component 0: all input to RGB pixels; component 1: alpha 0.5 everywhere. RGB is never a target."""
    alphas = {"rgb@224": alphas_entry([1000.0, 0.5], [0.0, 0.0])}
    for name in IMAGE_TOKENS:
        alphas[name] = alphas_entry([0.0, 0.5], [0.5, 0.5])
    for name in SEQUENCES:
        alphas[name] = alphas_entry([0.0, 0.5], [sequence_targets_in_rgb2x, 0.5], ["random"] * 2)
    return alphas, None


def _all2allmix_rgb2all_capbias():
    """all2all with alpha 0.01 / 0.1 / 1 / 10, rgb2all, and a caption-input bias (keep 'all')."""
    all2all = [0.01, 0.1, 1.0, 10.0]
    alphas = {"rgb@224": alphas_entry(all2all + [1000.0, 0.05], [0.0] * 6),
              "caption": alphas_entry(all2all + [0.0, 5.0], all2all + [0.5, 0.5], ["random"] * 5 + ["all"]),
              "det": alphas_entry(all2all + [0.0, 0.05], all2all + [0.5, 0.5], ["random"] * 6)}
    for name in IMAGE_TOKENS:
        alphas[name] = alphas_entry(all2all + [0.0, 0.05], all2all + [0.5, 0.5])
    return alphas, [1.0] * 6


MIXTURES = {
    "all2all_rgb2all_a0.5": lambda: _rgb2x_all2all(0.5),
    "all2all_rgb2dense_a0.5": lambda: _rgb2x_all2all(0.0),
    "all2allmix_rgb2all_capbias": _all2allmix_rgb2all_capbias,
}


def get_config(mixture: str = "all2all_rgb2all_a0.5"):
    if mixture not in MIXTURES:
        raise ValueError(f"unknown 4M-7 mixture {mixture!r}; choose from {sorted(MIXTURES)}")
    alphas, weights = MIXTURES[mixture]()
    return mixture_config(f"4m7:{mixture}", alphas, weights, input_tokens=128, target_tokens=128)
