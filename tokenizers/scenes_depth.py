"""Tokenizer spec: depth of the built-in `scenes` dataset at 64 px (8x8 = 64 tokens, 512 codes).

    python tools/train_tokenizer.py --config=tokenizers/scenes_depth.py --workdir runs/tok/depth

Inputs are robustly standardised per image (ml-4m's truncated standardisation); smooth-L1 loss as
ml-4m's depth tokenizer. Sizes and schedule as tokenizers/scenes_rgb.py.
"""

from fourm_jax.tokenizers.specs import make_spec

VIT = dict(type="vit", dim=128, depth=2, num_heads=4)
TRAIN = dict(steps=1500, warmup_steps=100, eval_every=500, checkpoint_every=250)


def get_config():
    return make_spec(
        dataset="scenes/64px", field="depth", image_size=64,
        tokenizer=dict(modality="depth", n_channels=1, patch_size=8, encoder=VIT, decoder=VIT, post_mlp=True,
                       codebook_size=512, latent_dim=32),
        train=dict(TRAIN, loss_fn="smooth_l1"))
