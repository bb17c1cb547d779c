"""Blockwise attention == the reference (values and gradients), and its memory is linear."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import blockwise, core, masks

# (q_len, kv_len, block_q, block_k, heads, kv_heads): lengths that do and do not
# divide the blocks, q_len != kv_len both ways, one block, GQA and MQA.
GRID = [
    (16, 16, 4, 4, 4, 4),
    (16, 16, 16, 16, 4, 2),
    (13, 29, 4, 8, 4, 1),
    (29, 13, 8, 4, 4, 2),
    (17, 17, 5, 3, 2, 2),
    (8, 40, 3, 16, 4, 4),
]


def _masks(kind, t, s):
  if kind == "none":
    return None
  kv_valid = masks.valid_from_lengths(jnp.array([s, max(1, s // 3)]), s)
  if kind == "keys":
    return masks.padding_mask(kv_valid)
  q_valid = masks.valid_from_lengths(jnp.array([t, max(1, t // 2)]), t)
  return masks.padding_mask(kv_valid, q_valid)  # "both": pad queries attend nothing


@pytest.mark.parametrize("t,s,bq,bk,n,kh", GRID)
@pytest.mark.parametrize("is_causal", [False, True])
@pytest.mark.parametrize("padding", ["none", "keys", "both"])
def test_blockwise_matches_reference(t, s, bq, bk, n, kh, is_causal, padding, btnh_inputs):
  q, k, v, cot = btnh_inputs(t * 100 + s, t, s, n, kh)
  mask = _masks(padding, t, s)

  def loss(impl):
    def f(q, k, v):
      out = core.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal,
                                       implementation=impl, block_q=bq, block_k=bk)
      return jnp.sum(out * cot), out
    return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True))

  (_, want), want_grads = loss("reference")(q, k, v)
  (_, got), got_grads = loss("blockwise")(q, k, v)
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  for g, w, name in zip(got_grads, want_grads, ["query", "key", "value"]):
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4, err_msg=f"d/d {name}")


@pytest.mark.parametrize("bias_shape", [(2, 4, 11, 9), (1, 4, 1, 9), (1, 1, 11, 1)])
def test_bias_and_its_gradient(bias_shape, btnh_inputs):
  q, k, v, cot = btnh_inputs(0, 11, 9, 4, 2)
  bias = jnp.float32(np.random.default_rng(1).normal(size=bias_shape))

  def grads(impl):
    f = lambda q, k, v, bias: jnp.sum(core.dot_product_attention(
        q, k, v, bias=bias, is_causal=True, implementation=impl, block_q=4, block_k=2) * cot)
    # Jitted, as below: eagerly, every op would be compiled on its own.
    return jax.jit(jax.grad(f, argnums=(0, 1, 2, 3)))(q, k, v, bias)

  for g, w, name in zip(grads("blockwise"), grads("reference"), ["q", "k", "v", "bias"]):
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, atol=1e-5, rtol=1e-4, err_msg=f"d/d {name}")


def test_causal_tiles_above_the_diagonal_are_never_computed(btnh_inputs):
  """A NaN in the last key block reaches only the queries that can see it.

  Were the masked tiles computed and discarded, 0 * NaN would spread the NaN
  to every query, in the output and in the query gradient.
  """
  t, block = 16, 4
  q, k, v, cot = btnh_inputs(3, t, t, 2, 2)
  v = v.at[:, -block:].set(jnp.nan)
  k = k.at[:, -block:].set(jnp.nan)

  def f(q):
    return blockwise.blockwise_attention(q, k, v, is_causal=True, block_q=block, block_k=block)

  out = jax.jit(f)(q)
  assert np.isfinite(out[:, :-block]).all()
  assert np.isnan(out[:, -block:]).all()
  dq = jax.jit(jax.grad(lambda q: jnp.sum(f(q) * cot)))(q)
  assert np.isfinite(dq[:, :-block]).all()


def test_default_blocks_clip_to_short_sequences(btnh_inputs):
  q, k, v, _ = btnh_inputs(4, 7, 5, 2, 1)
  np.testing.assert_allclose(
      jax.jit(blockwise.blockwise_attention)(q, k, v),
      jax.jit(lambda *a: core.dot_product_attention(*a, implementation="reference"))(q, k, v),
      atol=1e-6)


def test_bad_mask_shape_and_block_size_are_named(btnh_inputs):
  q, k, v, _ = btnh_inputs(5, 6, 6, 2, 2)
  with pytest.raises(ValueError, match=r"mask of shape \(1, 1, 3, 6\) does not broadcast"):
    blockwise.blockwise_attention(q, k, v, mask=jnp.ones((1, 1, 3, 6), bool))
  with pytest.raises(ValueError, match="block sizes must be positive"):
    blockwise.blockwise_attention(q, k, v, block_q=0)


def _temp_bytes(impl, t, grad, n=4, h=32, block=256):
  spec = jax.ShapeDtypeStruct((1, t, n, h), jnp.float32)
  f = lambda q, k, v: core.dot_product_attention(
      q, k, v, is_causal=True, implementation=impl, block_q=block, block_k=block)
  if grad:
    f = jax.grad(lambda q, k, v, f=f: jnp.sum(f(q, k, v)), argnums=(0, 1, 2))
  return jax.jit(f).lower(spec, spec, spec).compile().memory_analysis().temp_size_in_bytes


@pytest.mark.parametrize("grad", [False, True], ids=["forward", "backward"])
def test_compiled_memory_grows_linearly(grad):
  """From T=1024 to 4096 the temp memory grows by a few [T, heads, head_dim]
  buffers, where the reference grows with T^2 (checked too, so this test can fail)."""
  n, h = 4, 32
  small, large = (_temp_bytes("blockwise", t, grad, n, h) for t in (1024, 4096))
  per_token = n * h * 4  # one float32 [T, heads, head_dim] buffer, per position
  assert large - small <= 8 * per_token * (4096 - 1024), (small, large)
  ref_small, ref_large = (_temp_bytes("reference", t, grad, n, h) for t in (1024, 4096))
  assert ref_large / ref_small > 10, (ref_small, ref_large)
  assert large < ref_large / 10
