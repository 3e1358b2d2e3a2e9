"""Tokenizer spec: semantic segmentation of the built-in `scenes` dataset at 64 px (64 tokens,
256 codes).

    tools/train_tokenizer.py --config=tokenizers/scenes_semseg.py

As ml-4m's semseg tokenizer: class ids shifted by one (255 "ignore" -> 0), embedded with a learned
64-d class embedding, decoded to per-class logits, cross-entropy loss. n_labels must exceed the
largest shifted id; 32 covers datasets with up to 31 classes (unused labels cost nothing).
"""

from fourm_jax.tokenizers.specs import make_spec

VIT = dict(type="vit", dim=256, depth=4, num_heads=4)


def get_config():
    return make_spec(
        dataset="scenes", field="semseg", image_size=64,
        tokenizer=dict(modality="semseg", n_channels=64, n_labels=32, patch_size=8, encoder=VIT, decoder=VIT,
                       post_mlp=True, codebook_size=256, latent_dim=32),
        train=dict(loss_fn="cross_entropy"))
