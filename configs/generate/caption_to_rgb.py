"""Caption -> RGB tokens (ml-4m's demo setting for an RGB target: ROAR 25 steps, temperature 3
decaying one-over-x to 0.5, guidance 2, nucleus 0.8).

    python tools/generate.py --checkpoint DIR --recipe configs/generate/caption_to_rgb.py \\
        --condition caption="a red cube on a wooden table" --set tokenizers.tok_rgb@224=DIR --out OUT
"""

import ml_collections


def get_config():
    return ml_collections.ConfigDict(dict(
        conditions=["caption"],
        targets=[dict(domain="tok_rgb@224", scheme="roar", steps=25, temperature=3.0,
                      temp_schedule="onex:0.5:0.5", cfg_scale=2.0)],
        cfg_grow_conditioning=True, top_k=0.0, top_p=0.8, seed=0, num_samples=2,
        tokenizers={"tok_rgb@224": ""}, text_tokenizer=""))
