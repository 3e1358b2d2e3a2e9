"""Chained generation: caption -> CLIP -> RGB -> depth, normals, segmentation.

Each finished target conditions the next and joins the guided conditions (cfg_grow_conditioning),
as ml-4m's text-to-image chain: CLIP by ROAR in 49 steps (temperature 5 decaying one-over-x to
0.5, guidance 3), RGB in 25 (temperature 3), the dense modalities in 8 (temperature 3); nucleus 0.8.

    python tools/generate.py --checkpoint DIR --recipe configs/generate/caption_chain.py \\
        --condition caption="two spheres and a cone" --set tokenizers.tok_rgb@224=DIR ... --out OUT
"""

import ml_collections

ONEX = "onex:0.5:0.5"


def get_config():
    targets = [dict(domain="tok_clip@224", scheme="roar", steps=49, temperature=5.0, temp_schedule=ONEX,
                    cfg_scale=3.0),
               dict(domain="tok_rgb@224", scheme="roar", steps=25, temperature=3.0, temp_schedule=ONEX,
                    cfg_scale=2.0)]
    targets += [dict(domain=d, scheme="roar", steps=8, temperature=3.0, temp_schedule=ONEX, cfg_scale=2.0)
                for d in ("tok_depth@224", "tok_normal@224", "tok_semseg@224")]
    return ml_collections.ConfigDict(dict(
        conditions=["caption"], targets=targets, cfg_grow_conditioning=True, top_k=0.0, top_p=0.8, seed=0,
        num_samples=1, tokenizers={t["domain"]: "" for t in targets}, text_tokenizer=""))
