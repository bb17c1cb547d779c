"""Whole models built from `attention_jax.layers`, selected by config."""
