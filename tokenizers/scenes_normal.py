"""Tokenizer spec: surface normals of the built-in `scenes` dataset at 64 px (64 tokens, 512 codes).

    python tools/train_tokenizer.py --config=tokenizers/scenes_normal.py --workdir runs/tok/normal

Normals as [-1, 1] images (a horizontal flip negates their x component); MSE as ml-4m's normal
tokenizer. Sizes as tokenizers/scenes_rgb.py; 250 steps instead of 1,500 (the CPU time left for the
shipped artifact).
"""

from fourm_jax.tokenizers.specs import make_spec

VIT = dict(type="vit", dim=128, depth=2, num_heads=4)
TRAIN = dict(steps=250, warmup_steps=50, eval_every=125, checkpoint_every=125)


def get_config():
    return make_spec(
        dataset="scenes/64px", field="normal", image_size=64,
        tokenizer=dict(modality="normal", n_channels=3, patch_size=8, encoder=VIT, decoder=VIT, post_mlp=True,
                       codebook_size=512, latent_dim=32),
        train=dict(TRAIN, loss_fn="mse"))
