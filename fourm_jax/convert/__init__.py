"""Checkpoint conversion between ml-4m (PyTorch safetensors + config.json) and fourm_jax."""
