"""Training: mesh and sharding rules, optimizer, train step, checkpoints, metrics."""
