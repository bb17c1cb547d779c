"""Training: optimizer, pure sharded steps, mesh and shardings."""
