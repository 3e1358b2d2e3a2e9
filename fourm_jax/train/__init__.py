"""Training: mesh and sharding rules, checkpoints (and, later, optimizer and train step).

Keep this file free of imports: the model imports fourm_jax.train.sharding, and importing it must
not pull in trainer code.
"""
