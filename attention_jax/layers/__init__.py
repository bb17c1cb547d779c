"""Flax linen layers that own parameters and call the pure functions of `attention_jax.attention`."""
