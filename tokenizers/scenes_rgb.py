"""Tokenizer spec: RGB of the built-in `scenes` dataset at 64 px (8x8 = 64 tokens, 1024 codes).

    python tools/train_tokenizer.py --config=tokenizers/scenes_rgb.py --workdir runs/tok/rgb

Like ml-4m's RGB tokenizer (ViT encoder with post-MLP, 32-d cosine codebook, MSE on [-1, 1]
pixels), scaled down to 64 px images and a 2-core CPU budget (ViT 128-d x 2 blocks each side,
1,500 steps of 64 images), with a ViT decoder instead of the diffusion decoder.
"""

from fourm_jax.tokenizers.specs import make_spec

VIT = dict(type="vit", dim=128, depth=2, num_heads=4)
TRAIN = dict(steps=1500, warmup_steps=100, eval_every=500, checkpoint_every=250)


def get_config():
    return make_spec(
        dataset="scenes/64px", field="rgb", image_size=64,
        tokenizer=dict(modality="rgb", n_channels=3, patch_size=8, encoder=VIT, decoder=VIT, post_mlp=True,
                       codebook_size=1024, latent_dim=32),
        train=dict(TRAIN, loss_fn="mse"))
