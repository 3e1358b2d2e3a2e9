"""Scenes demo: RGB pixels (64 px) -> depth, normals, segmentation, caption and boxes, decoded
through the shipped tokenizers/scenes_64 tokenizers (`make tokenizers` builds them).

    python tools/generate.py --checkpoint runs/demo/MODALITIES/checkpoints \\
        --recipe configs/generate/scenes_rgb_to_all.py --condition rgb@64=scene.png \\
        --text_tokenizer ../shared/vocab/text_tokenizer_4m_wordpiece_30k.json --out runs/generated

Dense targets by MaskGIT in 8 steps at temperature 0.5, caption and boxes autoregressively at 0.3,
nucleus 0.8. Targets the model lacks must be removed (--target picks a subset).
"""

import ml_collections

DENSE = ("tok_depth@64", "tok_normal@64", "tok_semseg@64")


def get_config():
    targets = [dict(domain=d, scheme="maskgit", steps=8, temperature=0.5) for d in DENSE]
    targets += [dict(domain=d, tokens=48, temperature=0.3) for d in ("caption", "det")]
    return ml_collections.ConfigDict(dict(
        conditions=["rgb@64"], targets=targets, cfg_grow_conditioning=False, top_k=0.0, top_p=0.8,
        seed=0, num_samples=1, tokenizers={d: d for d in DENSE}, text_tokenizer=""))
