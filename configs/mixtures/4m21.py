"""4M-21 masking mixtures, one per dataset of ml-4m's 4M-21 data mix (cc12m 0.6, coyo700m 0.2, c4 0.2:
cfgs/default/4m/data/cc12m+coyo+c4/main/mix_mod21_all2allmix_rgb2all_capT5bias_C4.yaml).

    configs/mixtures/4m21.py            cc12m: mix_mod21_all2allmix_rgb2all_capT5bias, 21 modalities
    configs/mixtures/4m21.py:coyo700m   the 4M-7 modalities; ml-4m's file for it is missing from the
                                        repository, presumably 4M-7's all2allmix_rgb2all_capbias
    configs/mixtures/4m21.py:c4         text-only span corruption of captions (alpha 1, one component)

Fields as in configs/mixtures/4m7.py; 256 input / 256 target tokens. Quirk kept from ml-4m:
t5_caption gets target budget although it can never be a target, so that budget is unused.
"""

import pathlib

from fourm_jax import configs
from fourm_jax.masking import alphas_entry, mixture_config

ALL2ALL = [0.01, 0.1, 1.0, 10.0]
BIASED = ("caption", "t5_caption")
SEQUENCES = ("caption", "t5_caption", "det", "human_poses", "metadata", "sam_instance", "color_palette")
OTHERS = ("det", "tok_rgb@224", "tok_normal@224", "tok_depth@224", "tok_semseg@224", "tok_clip@224",
          "human_poses", "tok_dinov2@224", "tok_dinov2_global", "tok_imagebind@224",
          "tok_imagebind_global", "tok_canny_edge@224", "tok_sam_edge@224", "color_palette",
          "metadata", "sam_instance")


def _cc12m():
    """Components: all2all alpha 0.01 / 0.1 / 1 / 10; rgb2all; caption bias; T5-caption bias."""
    alphas = {
        "rgb@224": alphas_entry(ALL2ALL + [1000.0, 0.05, 0.05], [0.0] * 7),
        "caption": alphas_entry(ALL2ALL + [0.0, 5.0, 0.0], ALL2ALL + [0.5, 0.0, 0.5],
                          ["random"] * 5 + ["all", "random"]),
        "t5_caption": alphas_entry(ALL2ALL + [0.0, 0.0, 5.0], ALL2ALL + [0.5, 0.5, 0.0],
                             ["random"] * 6 + ["all"]),
    }
    for name in OTHERS:
        keep = None
        if name in SEQUENCES:
            keep = ["binary" if name == "color_palette" else "random"] * 7
        alphas[name] = alphas_entry(ALL2ALL + [0.0, 0.05, 0.05], ALL2ALL + [0.5, 0.5, 0.5], keep)
    return alphas, [1.0, 1.0, 1.0, 1.0, 1.0, 0.5, 0.5]


def _coyo700m():
    config = configs.load(f"{pathlib.Path(__file__).parent / '4m7.py'}:all2allmix_rgb2all_capbias")
    return config.alphas.to_dict(), list(config.sampling_weights)


def _c4():
    return {"caption": alphas_entry([1.0], [1.0], ["random"])}, None


DATASETS = {"cc12m": _cc12m, "coyo700m": _coyo700m, "c4": _c4}


def get_config(dataset: str = "cc12m"):
    if dataset not in DATASETS:
        raise ValueError(f"unknown 4M-21 dataset {dataset!r}; choose from {sorted(DATASETS)}")
    alphas, weights = DATASETS[dataset]()
    return mixture_config(f"4m21:{dataset}", alphas, weights, input_tokens=256, target_tokens=256)
