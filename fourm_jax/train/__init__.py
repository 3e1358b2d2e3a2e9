"""Training: optimizer, train step, checkpoints, metrics (mesh and sharding rules: fourm_jax.sharding)."""
