"""Every score function against a loop-by-loop NumPy version of its formula."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import scores

BATCH, Q_LEN, KV_LEN, D_Q, D_K, D_A = (2,), 3, 5, 4, 4, 6


def _pairwise(fn, q, k):
  """out[..., i, j] = fn(q[..., i, :], k[..., j, :]) by explicit loops."""
  out = np.zeros(q.shape[:-1] + (k.shape[-2],))
  for idx in np.ndindex(q.shape[:-2]):
    for i in range(q.shape[-2]):
      for j in range(k.shape[-2]):
        out[idx + (i, j)] = fn(q[idx + (i,)], k[idx + (j,)])
  return out


def _cos(a, b, temperature):
  return a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) / temperature


NUMPY = {
    "dot": lambda q, k: _pairwise(lambda a, b: np.sum(a * b), q, k),
    "scaled_dot": lambda q, k: _pairwise(lambda a, b: np.sum(a * b) / np.sqrt(len(a)), q, k),
    "general": lambda q, k, w: _pairwise(lambda a, b: a @ w @ b, q, k),
    "additive": lambda q, k, w_q, w_k, v, b: _pairwise(
        lambda x, y: v @ np.tanh(w_q.T @ x + w_k.T @ y + b), q, k),
    "cosine": lambda q, k: _pairwise(lambda a, b: _cos(a, b, 0.5), q, k),
    "pearson": lambda q, k: _pairwise(
        lambda a, b: _cos(a - a.mean(), b - b.mean(), 0.5), q, k),
    "location": lambda q, k, w, b: _pairwise(lambda a, _: 0.0, q, k)
    + np.einsum("...qd,dk->...qk", q, w[:, :k.shape[-2]]) + b[:k.shape[-2]],
}


def _params(name, rng):
  shapes = {
      "general": {"w": (D_Q, D_K)},
      "additive": {"w_q": (D_Q, D_A), "w_k": (D_K, D_A), "v": (D_A,), "b": (D_A,)},
      "location": {"w": (D_Q, KV_LEN + 2), "b": (KV_LEN + 2,)},
  }.get(name, {})
  return {key: rng.normal(size=shape) for key, shape in shapes.items()}


def _jax_fn(name):
  fixed = {"cosine": {"temperature": 0.5}, "pearson": {"temperature": 0.5}}.get(name, {})
  return lambda q, k, **p: scores.get(name)(q, k, **p, **fixed)


@pytest.mark.parametrize("name", sorted(scores.SCORES))
def test_values_match_numpy(name):
  rng = np.random.default_rng(0)
  q = rng.normal(size=BATCH + (Q_LEN, D_Q))
  k = rng.normal(size=BATCH + (KV_LEN, D_K))
  params = _params(name, rng)
  got = _jax_fn(name)(jnp.float32(q), jnp.float32(k),
                      **{key: jnp.float32(p) for key, p in params.items()})
  want = NUMPY[name](q, k, *params.values())
  assert got.shape == BATCH + (Q_LEN, KV_LEN)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(scores.SCORES))
def test_gradients_match_finite_differences(name, numeric_grad):
  rng = np.random.default_rng(1)
  q = rng.normal(size=BATCH + (Q_LEN, D_Q))
  k = rng.normal(size=BATCH + (KV_LEN, D_K))
  params = _params(name, rng)
  cotangent = rng.normal(size=BATCH + (Q_LEN, KV_LEN))
  keys = list(params)

  def jax_loss(q, k, *ps):
    out = _jax_fn(name)(q, k, **dict(zip(keys, ps)))
    return jnp.sum(out * cotangent)

  args = [q, k, *params.values()]
  got = jax.grad(jax_loss, argnums=tuple(range(len(args))))(
      *[jnp.float32(a) for a in args])
  want = numeric_grad(lambda *a: np.sum(NUMPY[name](*a) * cotangent), *args)
  for g, w, label in zip(got, want, ["query", "keys", *keys]):
    np.testing.assert_allclose(g, w, rtol=2e-3, atol=2e-4, err_msg=f"d/d {label}")


def test_pearson_is_numpy_correlation():
  rng = np.random.default_rng(2)
  q, k = rng.normal(size=(1, 6)), rng.normal(size=(1, 6))
  np.testing.assert_allclose(scores.pearson(jnp.float32(q), jnp.float32(k))[0, 0],
                             np.corrcoef(q[0], k[0])[0, 1], rtol=1e-5)


@pytest.mark.parametrize("name", ["cosine", "pearson"])
def test_zero_vector_gives_zero_score_and_finite_gradient(name):
  q = jnp.zeros((1, 4))
  k = jnp.asarray([[1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0]])
  fn = scores.get(name)
  np.testing.assert_array_equal(fn(q, k), np.zeros((1, 2)))
  grads = jax.grad(lambda q, k: jnp.sum(fn(q, k)), argnums=(0, 1))(q, k)
  assert all(np.isfinite(g).all() for g in grads)


def test_scaled_dot_is_dot_over_sqrt_d():
  rng = np.random.default_rng(3)
  q, k = jnp.float32(rng.normal(size=(3, 16))), jnp.float32(rng.normal(size=(5, 16)))
  np.testing.assert_allclose(scores.scaled_dot(q, k), scores.dot(q, k) / 4.0, rtol=1e-6)
  np.testing.assert_allclose(scores.scaled_dot(q, k, scale=0.1), scores.dot(q, k) * 0.1,
                             rtol=1e-6)


def test_scores_broadcast_over_heads():
  """A query without a head axis against keys with one: the RNN-decoder case."""
  rng = np.random.default_rng(4)
  q = jnp.float32(rng.normal(size=(2, 1, 1, 4)))  # [batch, 1, q_len, d]
  k = jnp.float32(rng.normal(size=(2, 3, 5, 4)))  # [batch, heads, kv_len, d]
  got = scores.dot(q, k)
  np.testing.assert_allclose(got, np.einsum("bqd,bhkd->bhqk", q[:, 0], k), rtol=1e-5)


def test_location_needs_enough_positions():
  with pytest.raises(ValueError, match="kv_len 5 exceeds the parameter's max_len 3"):
    scores.location(jnp.ones((1, 4)), jnp.ones((5, 4)), w=jnp.ones((4, 3)))


def test_unknown_score_names_the_known_ones():
  with pytest.raises(ValueError, match="unknown score function 'dott'.*scaled_dot"):
    scores.get("dott")
