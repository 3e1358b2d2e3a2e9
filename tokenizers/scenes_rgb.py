"""Tokenizer spec: RGB of the built-in `scenes` dataset at 64 px (8x8 = 64 tokens, 1024 codes).

    tools/train_tokenizer.py --config=tokenizers/scenes_rgb.py

Like ml-4m's RGB tokenizer (ViT encoder with post-MLP, 32-d cosine codebook, MSE on [-1, 1]
pixels), scaled down to 64 px images, and with a ViT decoder instead of the diffusion decoder.
"""

from fourm_jax.tokenizers.specs import make_spec

VIT = dict(type="vit", dim=256, depth=4, num_heads=4)


def get_config():
    return make_spec(
        dataset="scenes", field="rgb", image_size=64,
        tokenizer=dict(modality="rgb", n_channels=3, patch_size=8, encoder=VIT, decoder=VIT, post_mlp=True,
                       codebook_size=1024, latent_dim=32),
        train=dict(loss_fn="mse"))
