"""Tokenizer spec: semantic segmentation of the built-in `scenes` dataset at 64 px (64 tokens,
256 codes).

    python tools/train_tokenizer.py --config=tokenizers/scenes_semseg.py --workdir runs/tok/semseg

As ml-4m's semseg tokenizer: class ids shifted by one (255 "ignore" -> 0 "no class"), embedded with
a learned 64-d class embedding, decoded to per-class logits, cross-entropy loss. n_labels covers
the scenes classes after the shift (0 = no class, 1..6 = background, floor, the four shapes).
Sizes as tokenizers/scenes_rgb.py; 250 steps instead of 1,500 (the CPU time left for the
shipped artifact).
"""

from fourm_jax.data.scenes import CLASS_NAMES
from fourm_jax.tokenizers.specs import make_spec

VIT = dict(type="vit", dim=128, depth=2, num_heads=4)
TRAIN = dict(steps=250, warmup_steps=50, eval_every=125, checkpoint_every=125)


def get_config():
    return make_spec(
        dataset="scenes/64px", field="semseg", image_size=64,
        tokenizer=dict(modality="semseg", n_channels=64, n_labels=len(CLASS_NAMES) + 1, patch_size=8,
                       encoder=VIT, decoder=VIT, post_mlp=True, codebook_size=256, latent_dim=32),
        train=dict(TRAIN, loss_fn="cross_entropy"))
