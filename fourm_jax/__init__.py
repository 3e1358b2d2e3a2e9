"""fourm_jax: 4M and 4M-21 (massively multimodal masked modeling) in JAX/Flax."""

__version__ = "0.1.0"
