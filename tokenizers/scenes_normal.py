"""Tokenizer spec: surface normals of the built-in `scenes` dataset at 64 px (64 tokens, 512 codes).

    tools/train_tokenizer.py --config=tokenizers/scenes_normal.py

Normals as [-1, 1] images (a horizontal flip negates their x component); MSE as ml-4m's normal
tokenizer.
"""

from fourm_jax.tokenizers.specs import make_spec

VIT = dict(type="vit", dim=256, depth=4, num_heads=4)


def get_config():
    return make_spec(
        dataset="scenes", field="normal", image_size=64,
        tokenizer=dict(modality="normal", n_channels=3, patch_size=8, encoder=VIT, decoder=VIT, post_mlp=True,
                       codebook_size=512, latent_dim=32),
        train=dict(loss_fn="mse"))
