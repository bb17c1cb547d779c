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


def _np_location_features(previous, filters):
  """f[..., j, c] = sum_w filters[w, c] * previous[..., j + w - width // 2], zero outside."""
  width, channels = filters.shape
  out = np.zeros(previous.shape + (channels,))
  for idx in np.ndindex(previous.shape[:-1]):
    for j in range(previous.shape[-1]):
      for w in range(width):
        source = j + w - width // 2
        if 0 <= source < previous.shape[-1]:
          out[idx + (j,)] += filters[w] * previous[idx + (source,)]
  return out


def _np_location_aware(q, k, previous, filters, w_q, w_k, w_f, v, b=None):
  """v^T tanh(W_q q_i + W_k k_j + W_f f_ij + b) by explicit loops, leading dims broadcast."""
  lead = np.broadcast_shapes(q.shape[:-2], k.shape[:-2], previous.shape[:-2])
  q, k = np.broadcast_to(q, lead + q.shape[-2:]), np.broadcast_to(k, lead + k.shape[-2:])
  f = _np_location_features(np.broadcast_to(previous, lead + previous.shape[-2:]), filters)
  out = np.zeros(f.shape[:-1])
  for idx in np.ndindex(out.shape):
    *batch, i, j = idx
    hidden = w_q.T @ q[(*batch, i)] + w_k.T @ k[(*batch, j)] + w_f.T @ f[idx]
    out[idx] = v @ np.tanh(hidden + (0.0 if b is None else b))
  return out


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
    "location_aware": _np_location_aware,
}
WIDTH, CHANNELS = 3, 2  # location_aware's filters


def _params(name, rng):
  shapes = {
      "general": {"w": (D_Q, D_K)},
      "additive": {"w_q": (D_Q, D_A), "w_k": (D_K, D_A), "v": (D_A,), "b": (D_A,)},
      "location": {"w": (D_Q, KV_LEN + 2), "b": (KV_LEN + 2,)},
      "location_aware": {"previous": BATCH + (Q_LEN, KV_LEN), "filters": (WIDTH, CHANNELS),
                         "w_q": (D_Q, D_A), "w_k": (D_K, D_A), "w_f": (CHANNELS, D_A),
                         "v": (D_A,), "b": (D_A,)},
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


def _location_aware_params(rng, width, with_bias=True):
  shapes = {"filters": (width, CHANNELS), "w_q": (D_Q, D_A), "w_k": (D_K, D_A),
            "w_f": (CHANNELS, D_A), "v": (D_A,)}
  if with_bias:
    shapes["b"] = (D_A,)
  return {key: rng.normal(size=shape) for key, shape in shapes.items()}


@pytest.mark.parametrize("with_bias", [True, False])
def test_location_aware_broadcasts_and_pads_the_convolution_with_zeros(with_bias):
  """A filter wider than the keys: every window reaches past an edge."""
  rng = np.random.default_rng(5)
  q = rng.normal(size=(2, 1, Q_LEN, D_Q))  # [batch, 1, q_len, d]
  k = rng.normal(size=(2, 3, KV_LEN, D_K))  # [batch, heads, kv_len, d]
  previous = rng.dirichlet(np.ones(KV_LEN), size=(1, 3, Q_LEN))  # [1, heads, q_len, kv_len]
  params = _location_aware_params(rng, width=2 * KV_LEN + 1, with_bias=with_bias)
  got = scores.location_aware(jnp.float32(q), jnp.float32(k), previous=jnp.float32(previous),
                              **{key: jnp.float32(p) for key, p in params.items()})
  assert got.shape == (2, 3, Q_LEN, KV_LEN)
  np.testing.assert_allclose(got, _np_location_aware(q, k, previous, **params), rtol=1e-5,
                             atol=1e-5)


def test_location_features_of_a_one_hot_are_the_filter_cut_at_the_edge():
  filters = np.arange(10.0).reshape(5, 2)  # width 5: positions j - 2 .. j + 2
  first = np.eye(KV_LEN)[0]  # the previous step attended position 0
  got = np.asarray(scores.location_features(jnp.float32(first[None]), jnp.float32(filters)))[0]
  want = np.zeros((KV_LEN, 2))
  want[:3] = filters[2::-1]  # f[j] = filters[2 - j]: nothing wraps round from the far end
  np.testing.assert_array_equal(got, want)
  with pytest.raises(ValueError, match="filter width must be odd, got 4"):
    scores.location_features(jnp.ones((1, 3)), jnp.ones((4, 2)))


def test_location_aware_from_projected_keys_is_the_same_score():
  rng = np.random.default_rng(6)
  q = jnp.float32(rng.normal(size=BATCH + (Q_LEN, D_Q)))
  k = jnp.float32(rng.normal(size=BATCH + (KV_LEN, D_K)))
  previous = jnp.float32(rng.dirichlet(np.ones(KV_LEN), size=BATCH + (Q_LEN,)))
  params = {key: jnp.float32(p) for key, p in _location_aware_params(rng, width=3).items()}
  plain = scores.location_aware(q, k, previous=previous, **params)
  w_k = params.pop("w_k")
  projected = scores.location_aware_projected(q, k @ w_k, previous=previous, **params)
  np.testing.assert_array_equal(projected, plain)
