"""RGB -> everything (ml-4m's demo settings for an RGB input, DEFAULTS_RGB2X).

    python tools/generate.py --checkpoint DIR --recipe configs/generate/rgb_to_all.py \\
        --condition rgb@224=photo.png --set tokenizers.tok_depth@224=DIR ... --out OUT

Dense targets in one ROAR step at temperature 0.01 with guidance 2 (a near-deterministic one-shot
prediction), caption and boxes autoregressively at temperature 0.3, nucleus 0.8. Targets a model
lacks must be removed (--target picks a subset).
"""

import ml_collections

DENSE = ("tok_clip@224", "tok_depth@224", "tok_normal@224", "tok_semseg@224")


def get_config():
    targets = [dict(domain=d, scheme="roar", steps=1, temperature=0.01, cfg_scale=2.0) for d in DENSE]
    targets += [dict(domain=d, tokens=64, temperature=0.3) for d in ("caption", "det")]
    return ml_collections.ConfigDict(dict(
        conditions=["rgb@224"], targets=targets, cfg_grow_conditioning=False, top_k=0.0, top_p=0.8,
        seed=0, num_samples=1, tokenizers={d: "" for d in DENSE}, text_tokenizer=""))
