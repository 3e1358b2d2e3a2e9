"""Pure-functional modality tokenizers (ml-4m's VQ-VAE family): see vqvae.py for the API."""

from fourm_jax.tokenizers.config import NetConfig, TokenizerConfig
from fourm_jax.tokenizers.vqvae import VQVAE, Tokenizer

__all__ = ["VQVAE", "NetConfig", "Tokenizer", "TokenizerConfig"]
