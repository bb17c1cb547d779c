"""attention_jax: attention mechanisms in JAX/Flax, from Bahdanau/Luong to the Transformer."""
