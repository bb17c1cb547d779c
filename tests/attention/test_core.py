"""attend() and dot_product_attention() against NumPy loops, across backends."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import core, masks

CPU_IMPLEMENTATIONS = ["reference", "blockwise", "xla"]
ON_GPU = jax.default_backend() == "gpu"


def _np_attention(q, k, v, mask=None, bias=None, causal=False, scale=None):
  """softmax(q.k * scale + bias) v, one (batch, head, query) at a time, in float64."""
  b, t, n, h = q.shape
  s, kh = k.shape[1], k.shape[2]
  scale = 1 / np.sqrt(h) if scale is None else scale
  mask = np.ones((1, 1, 1, 1), bool) if mask is None else np.asarray(mask)
  bias = np.zeros((1, 1, 1, 1)) if bias is None else np.asarray(bias, np.float64)
  mask = np.broadcast_to(mask, (b, n, t, s))
  bias = np.broadcast_to(bias, (b, n, t, s))
  out = np.zeros((b, t, n, h))
  for bi in range(b):
    for ni in range(n):
      kv_head = ni // (n // kh)  # grouped-query: n // kh query heads share a kv head
      for i in range(t):
        allowed = mask[bi, ni, i] & (np.arange(s) <= i if causal else True)
        if not allowed.any():
          continue
        logits = k[bi, :, kv_head] @ q[bi, i, ni] * scale + bias[bi, ni, i]
        w = np.exp(logits[allowed] - logits[allowed].max())
        out[bi, i, ni] = (w / w.sum()) @ v[bi, allowed, kv_head]
  return out


def _inputs(rng, b=2, t=5, s=7, n=4, kh=2, h=8, dtype=np.float32):
  q = rng.normal(size=(b, t, n, h)).astype(dtype)
  k = rng.normal(size=(b, s, kh, h)).astype(dtype)
  v = rng.normal(size=(b, s, kh, h)).astype(dtype)
  return q, k, v


def test_attend_matches_numpy():
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(2, 3, 4))
  values = rng.normal(size=(2, 4, 5))
  mask = rng.random((2, 3, 4)) < 0.7
  mask[1, 2] = False
  context, weights = core.attend(jnp.float32(scores), jnp.float32(values), jnp.asarray(mask))
  want_w = np.zeros_like(scores)
  for idx in np.ndindex(2, 3):
    if mask[idx].any():
      e = np.exp(scores[idx]) * mask[idx]
      want_w[idx] = e / e.sum()
  np.testing.assert_allclose(weights, want_w, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(context, np.einsum("bqk,bkd->bqd", want_w, values),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(context[1, 2], np.zeros(5))


CASES = {
    "plain": {},
    "causal": {"is_causal": True},
    "padding": {"mask": "padding"},
    "padding+causal+bias": {"mask": "padding", "bias": True, "is_causal": True},
    "dense mask+scale": {"mask": "dense", "scale": 0.3},
}


def _case(name, rng, b=2, t=5, s=7, n=4):
  kw = dict(CASES[name])
  if kw.get("mask") == "padding":
    kw["mask"] = masks.padding_mask(masks.valid_from_lengths(jnp.array([s, 3]), s))
  elif kw.get("mask") == "dense":
    kw["mask"] = jnp.asarray(rng.random((b, n, t, s)) < 0.6)
  if kw.get("bias"):
    kw["bias"] = jnp.float32(rng.normal(size=(1, n, t, s)))
  return kw


@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_dot_product_attention_matches_numpy(implementation, case):
  rng = np.random.default_rng(1)
  q, k, v = _inputs(rng)
  kw = _case(case, rng)
  # Jitted, as elsewhere here: eagerly, every op would be compiled on its own.
  got = jax.jit(lambda q, k, v: core.dot_product_attention(
      q, k, v, implementation=implementation, block_q=2, block_k=3, **kw))(q, k, v)
  want = _np_attention(q, k, v, kw.get("mask"), kw.get("bias"), kw.get("is_causal", False),
                       kw.get("scale"))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("implementation", ["blockwise", "xla"])
def test_gradients_match_reference(implementation):
  rng = np.random.default_rng(2)
  q, k, v = _inputs(rng)
  kw = _case("padding+causal+bias", rng)
  bias = kw.pop("bias")
  cot = jnp.float32(rng.normal(size=q.shape))

  def loss(impl):
    return lambda q, k, v, bias: jnp.sum(core.dot_product_attention(
        q, k, v, bias=bias, implementation=impl, block_q=2, block_k=3, **kw) * cot)

  want = jax.jit(jax.grad(loss("reference"), argnums=(0, 1, 2, 3)))(q, k, v, bias)
  got = jax.jit(jax.grad(loss(implementation), argnums=(0, 1, 2, 3)))(q, k, v, bias)
  for g, w, name in zip(got, want, ["query", "key", "value", "bias"]):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"d/d {name}")


@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_causality_by_gradients(implementation):
  """With a causal mask, output i never depends on input j > i, and does on j <= i."""
  t, d, n, h = 6, 8, 2, 4
  rng = np.random.default_rng(3)
  x = jnp.float32(rng.normal(size=(1, t, d)))
  w_q, w_k, w_v = (jnp.float32(rng.normal(size=(d, n, h))) for _ in range(3))

  def self_attention(x):
    q, k, v = (jnp.einsum("btd,dnh->btnh", x, w) for w in (w_q, w_k, w_v))
    return core.dot_product_attention(q, k, v, is_causal=True, implementation=implementation,
                                      block_q=2, block_k=2)

  jac = jax.jit(jax.jacrev(self_attention))(x)[0, :, :, :, 0]  # [t, n, h, t, d]
  dependence = np.abs(np.asarray(jac)).sum(axis=(1, 2, 4))  # [output t, input t]
  future = np.triu(np.ones((t, t), bool), k=1)
  np.testing.assert_array_equal(dependence[future], 0.0)
  assert (dependence[~future] > 0).all()


@pytest.mark.parametrize("implementation", CPU_IMPLEMENTATIONS)
def test_fully_masked_queries_give_zeros_and_finite_gradients(implementation):
  rng = np.random.default_rng(4)
  q, k, v = _inputs(rng)
  q_valid = jnp.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], bool)
  mask = masks.padding_mask(jnp.ones((2, 7), bool), q_valid)

  def f(q, k, v):
    return core.dot_product_attention(q, k, v, mask=mask, implementation=implementation,
                                      block_q=2, block_k=3)

  out = jax.jit(f)(q, k, v)
  np.testing.assert_array_equal(np.asarray(out)[~np.asarray(q_valid)], 0.0)
  np.testing.assert_allclose(out, _np_attention(q, k, v, mask), rtol=1e-5, atol=2e-6)
  grads = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a) ** 2), argnums=(0, 1, 2)))(q, k, v)
  for g in grads:
    assert np.isfinite(g).all()
  np.testing.assert_array_equal(np.asarray(grads[0])[~np.asarray(q_valid)], 0.0)


def test_bfloat16_inputs_keep_dtype_and_softmax_in_float32():
  rng = np.random.default_rng(5)
  q, k, v = _inputs(rng)
  q16, k16, v16 = (jnp.asarray(a, jnp.bfloat16) for a in (q, k, v))
  for impl in CPU_IMPLEMENTATIONS:
    out = jax.jit(lambda *a: core.dot_product_attention(*a, is_causal=True,
                                                        implementation=impl))(q16, k16, v16)
    assert out.dtype == jnp.bfloat16
    want = _np_attention(*(np.asarray(a, np.float32) for a in (q16, k16, v16)), causal=True)
    np.testing.assert_allclose(np.asarray(out, np.float32), want, atol=3e-2, err_msg=impl)
  weights = jax.jit(core.dot_product_attention_weights)(q16, k16)
  assert weights.dtype == jnp.float32
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.skipif(not ON_GPU, reason="cuDNN attention needs an NVIDIA GPU; CPU has none")
@pytest.mark.parametrize("case", ["plain", "causal", "padding"])
def test_cudnn_matches_reference(case):
  rng = np.random.default_rng(6)
  q, k, v = _inputs(rng, b=2, t=128, s=128, n=4, kh=2, h=64)
  kw = _case(case, rng, t=128, s=128)
  q16, k16, v16 = (jnp.asarray(a, jnp.bfloat16) for a in (q, k, v))
  got = core.dot_product_attention(q16, k16, v16, implementation="cudnn", **kw)
  want = core.dot_product_attention(q16, k16, v16, implementation="reference", **kw)
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             atol=2e-2)


@pytest.mark.skipif(ON_GPU, reason="checks the error raised where there is no GPU")
def test_cudnn_without_a_gpu_says_so():
  q, k, v = (jnp.asarray(a, jnp.bfloat16) for a in _inputs(np.random.default_rng(6)))
  with pytest.raises(ValueError, match="implementation='cudnn' needs an NVIDIA GPU"):
    core.dot_product_attention(q, k, v, implementation="cudnn")


def test_cudnn_in_float32_says_which_dtypes():
  q, k, v = _inputs(np.random.default_rng(6))
  with pytest.raises(ValueError, match="'cudnn' needs float16 or bfloat16 inputs .*got float32"):
    core.dot_product_attention(q, k, v, implementation="cudnn")


def test_weights_match_reference_output():
  rng = np.random.default_rng(7)
  q, k, v = _inputs(rng, kh=4)
  weights = jax.jit(lambda q, k: core.dot_product_attention_weights(q, k, is_causal=True))(q, k)
  np.testing.assert_allclose(np.einsum("bnts,bsnh->btnh", weights, v),
                             _np_attention(q, k, v, causal=True), rtol=1e-5, atol=2e-6)


def test_bad_shapes_and_names_give_clear_errors():
  q, k, v = _inputs(np.random.default_rng(8), n=3, kh=2)
  with pytest.raises(ValueError, match=r"query heads \(3\) must be a multiple of key/value heads \(2\)"):
    core.dot_product_attention(q, k, v)
  with pytest.raises(ValueError, match="expected BTNH arrays"):
    core.dot_product_attention(q[0], k[0], v[0])
  q, k, v = _inputs(np.random.default_rng(8))
  with pytest.raises(ValueError, match="unknown attention implementation 'flash'"):
    core.dot_product_attention(q, k, v, implementation="flash")
