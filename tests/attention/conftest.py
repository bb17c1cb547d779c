"""Shared inputs of the attention tests."""
import jax.numpy as jnp
import numpy as np
import pytest


def _btnh_inputs(seed, t, s, n=4, kh=2, b=2, h=8):
  """q `[b, t, n, h]`, k and v `[b, s, kh, h]` and an output cotangent like q, float32
  standard normals drawn in that order from `seed`."""
  rng = np.random.default_rng(seed)
  q = jnp.float32(rng.normal(size=(b, t, n, h)))
  k = jnp.float32(rng.normal(size=(b, s, kh, h)))
  v = jnp.float32(rng.normal(size=(b, s, kh, h)))
  cotangent = jnp.float32(rng.normal(size=(b, t, n, h)))
  return q, k, v, cotangent


@pytest.fixture
def btnh_inputs():
  """`btnh_inputs(seed, t, s, n=4, kh=2, b=2, h=8)` -> (q, k, v, cotangent)."""
  return _btnh_inputs
