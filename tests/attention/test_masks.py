"""Masks against their definitions written as loops; the NaN-safe masked softmax."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import masks


def _loop_mask(q_len, kv_len, rule):
  return np.array([[rule(i, j) for j in range(kv_len)] for i in range(q_len)])


def test_valid_from_lengths_and_tokens():
  np.testing.assert_array_equal(
      masks.valid_from_lengths(jnp.array([0, 2, 4]), 4),
      [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]])
  np.testing.assert_array_equal(
      masks.valid_from_tokens(jnp.array([[5, 3, 0, 0], [0, 1, 2, 0]])),
      [[1, 1, 0, 0], [0, 1, 1, 0]])


def test_padding_mask_keys_and_queries():
  kv_valid = np.array([[1, 1, 0], [1, 0, 0]], bool)
  q_valid = np.array([[1, 0], [1, 1]], bool)
  got = masks.padding_mask(jnp.asarray(kv_valid), jnp.asarray(q_valid))
  assert got.shape == (2, 1, 2, 3)
  for b in range(2):
    np.testing.assert_array_equal(
        got[b, 0], _loop_mask(2, 3, lambda i, j: q_valid[b, i] and kv_valid[b, j]))
  assert masks.padding_mask(jnp.asarray(kv_valid)).shape == (2, 1, 1, 3)


@pytest.mark.parametrize("q_len,kv_len,offset", [(4, 4, 0), (3, 6, 0), (2, 6, 4), (6, 3, 0)])
def test_causal_mask(q_len, kv_len, offset):
  got = masks.causal_mask(q_len, kv_len, q_offset=offset)
  assert got.shape == (1, 1, q_len, kv_len)
  np.testing.assert_array_equal(got[0, 0], _loop_mask(q_len, kv_len, lambda i, j: j <= i + offset))


def test_causal_mask_matches_jax_nn_alignment():
  # Same top-left alignment as jax.nn.dot_product_attention(is_causal=True).
  np.testing.assert_array_equal(masks.causal_mask(3, 5)[0, 0], np.tril(np.ones((3, 5), bool)))


@pytest.mark.parametrize("window,offset", [(0, 0), (1, 0), (2, 3)])
def test_local_mask(window, offset):
  got = masks.local_mask(4, 7, window=window, q_offset=offset)
  np.testing.assert_array_equal(
      got[0, 0], _loop_mask(4, 7, lambda i, j: abs(i + offset - j) <= window))


def test_local_mask_rejects_negative_window():
  with pytest.raises(ValueError, match="window must be >= 0, got -1"):
    masks.local_mask(3, window=-1)


def test_prefix_mask():
  prefix = [2, 0]
  got = masks.prefix_mask(jnp.array(prefix), 4)
  assert got.shape == (2, 1, 4, 4)
  for b, p in enumerate(prefix):
    np.testing.assert_array_equal(got[b, 0], _loop_mask(4, 4, lambda i, j: j <= i or j < p))


def test_segment_mask():
  seg = np.array([[1, 1, 2, 2, 0]])
  got = masks.segment_mask(jnp.asarray(seg))
  np.testing.assert_array_equal(got[0, 0], _loop_mask(5, 5, lambda i, j: seg[0, i] == seg[0, j]))


def test_combine_is_and_and_skips_none():
  causal = masks.causal_mask(3)
  window = masks.local_mask(3, window=1)
  np.testing.assert_array_equal(masks.combine(None, causal, None, window),
                                np.asarray(causal) & np.asarray(window))
  assert masks.combine(None, None) is None


def _np_masked_softmax(x, mask):
  out = np.zeros_like(x, dtype=np.float64)
  for idx in np.ndindex(x.shape[:-1]):
    m = mask[idx]
    if m.any():
      e = np.exp(x[idx][m] - x[idx][m].max())
      out[idx][m] = e / e.sum()
  return out


def test_masked_softmax_matches_numpy_including_empty_rows():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(3, 4, 6)) * 3
  mask = rng.random((3, 4, 6)) < 0.6
  mask[0, 1] = False  # a fully masked row
  got = masks.masked_softmax(jnp.float32(x), jnp.asarray(mask))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, _np_masked_softmax(x, mask), rtol=1e-5, atol=1e-7)
  np.testing.assert_array_equal(got[0, 1], np.zeros(6))
  with np.errstate(divide="ignore"):  # log 0 = -inf where masked, as intended
    want_log = np.log(_np_masked_softmax(x, mask))
  np.testing.assert_allclose(
      masks.masked_log_softmax(jnp.float32(x), jnp.asarray(mask)), want_log,
      rtol=1e-5, atol=1e-6)


def test_masked_softmax_gradient_matches_finite_differences(numeric_grad):
  rng = np.random.default_rng(1)
  x = rng.normal(size=(4, 5))
  mask = rng.random((4, 5)) < 0.7
  mask[2] = False
  cot = rng.normal(size=(4, 5))
  got = jax.grad(lambda x: jnp.sum(masks.masked_softmax(x, mask) * cot))(jnp.float32(x))
  (want,) = numeric_grad(lambda x: np.sum(_np_masked_softmax(x, mask) * cot), x)
  np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5)


def test_fully_masked_rows_have_zero_finite_gradients():
  x = jnp.float32(np.random.default_rng(2).normal(size=(2, 5)))
  mask = jnp.zeros((2, 5), bool)
  for fn in (masks.masked_softmax, lambda x, m: jnp.exp(masks.masked_log_softmax(x, m))):
    w = fn(x, mask)
    np.testing.assert_array_equal(w, np.zeros((2, 5)))
    g = jax.grad(lambda x: jnp.sum(fn(x, mask) * jnp.arange(5.0)))(x)
    np.testing.assert_array_equal(g, np.zeros((2, 5)))


def test_masked_softmax_is_float32_for_bfloat16_and_stable_for_large_scores():
  # exp(100) overflows float32: only the max-shift keeps this finite.
  x = jnp.asarray([[100.0, 99.0, -100.0]], jnp.bfloat16)
  got = masks.masked_softmax(x)
  assert got.dtype == jnp.float32
  e = np.exp(np.array([0.0, -1.0]))
  np.testing.assert_allclose(got[0], [*(e / e.sum()), 0.0], rtol=1e-6, atol=1e-30)


def test_per_sequence_offsets_for_cached_decoding():
  offsets = np.array([0, 2, 5])
  got = masks.causal_mask(2, 8, q_offset=jnp.asarray(offsets))
  assert got.shape == (3, 1, 2, 8)
  for b, off in enumerate(offsets):
    np.testing.assert_array_equal(got[b, 0], _loop_mask(2, 8, lambda i, j: j <= i + off))
  local = masks.local_mask(2, 8, window=1, q_offset=jnp.asarray(offsets))
  np.testing.assert_array_equal(local[2, 0], _loop_mask(2, 8, lambda i, j: abs(i + 5 - j) <= 1))
