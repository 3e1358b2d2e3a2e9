"""Tokenizer spec: depth of the built-in `scenes` dataset at 64 px (8x8 = 64 tokens, 512 codes).

    tools/train_tokenizer.py --config=tokenizers/scenes_depth.py

Inputs are robustly standardised per image (ml-4m's truncated standardisation); smooth-L1 loss as
ml-4m's depth tokenizer.
"""

from fourm_jax.tokenizers.specs import make_spec

VIT = dict(type="vit", dim=256, depth=4, num_heads=4)


def get_config():
    return make_spec(
        dataset="scenes", field="depth", image_size=64,
        tokenizer=dict(modality="depth", n_channels=1, patch_size=8, encoder=VIT, decoder=VIT, post_mlp=True,
                       codebook_size=512, latent_dim=32),
        train=dict(loss_fn="smooth_l1"))
