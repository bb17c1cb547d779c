"""Attention from scores, and scaled dot-product attention with several backends.

Layout BTNH: query `[batch, q_len, heads, head_dim]`, key/value
`[batch, kv_len, kv_heads, head_dim]` with `heads % kv_heads == 0`
(grouped-query attention when kv_heads < heads). Masks are boolean,
True = attend, broadcastable to `[batch, heads, q_len, kv_len]`; biases are
added to the scaled scores. The softmax runs in float32 whatever the input
dtype, and a query that may attend nothing gets a zero output. The Pallas
kernel backends ('splash', 'pallas_gpu') live in `kernels.py`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from attention_jax.attention import blockwise, kernels, masks

Array = jax.Array

IMPLEMENTATIONS = ("reference", "blockwise", "xla", "cudnn") + kernels.KERNELS

# The JAX backend each device-specific implementation needs, and that device in words.
_DEVICES = {"cudnn": ("gpu", "an NVIDIA GPU"), "splash": ("tpu", "a TPU"),
            "pallas_gpu": ("gpu", "a GPU")}


def attend(scores: Array, values: Array, mask: Array | None = None) -> tuple[Array, Array]:
  """Soft attention: weights = masked softmax of the scores; context = weighted sum.

  Args:
    scores: `[..., q_len, kv_len]`, from any function in `scores.py`.
    values: `[..., kv_len, d_v]`.
    mask: bool, broadcastable to `scores`; True = attend.

  Returns:
    context `[..., q_len, d_v]` in `values.dtype` and float32 weights
    `[..., q_len, kv_len]`.
  """
  weights = masks.masked_softmax(scores, mask)
  context = jnp.einsum("...qk,...kd->...qd", weights.astype(values.dtype), values)
  return context, weights


def _check_shapes(query: Array, key: Array, value: Array) -> None:
  if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
    raise ValueError(
        "expected BTNH arrays [batch, length, heads, head_dim], got query "
        f"{query.shape}, key {key.shape}, value {value.shape}")
  if key.shape != value.shape:
    raise ValueError(f"key {key.shape} and value {value.shape} must have the same shape")
  (b, _, n, h), (bk, _, k, hk) = query.shape, key.shape
  if b != bk or h != hk or n % k:
    raise ValueError(
        f"query {query.shape} and key {key.shape}: batch and head_dim must match and "
        f"query heads ({n}) must be a multiple of key/value heads ({k})")


def dot_product_attention_weights(query: Array, key: Array, mask: Array | None = None,
                                  bias: Array | None = None, is_causal: bool = False,
                                  scale: float | None = None) -> Array:
  """The attention weights softmax(q k^T * scale + bias), masked, in float32.

  Args: as `dot_product_attention`.

  Returns:
    float32 `[batch, heads, q_len, kv_len]`; fully masked rows are zeros.
  """
  _check_shapes(query, key, key)
  b, t, n, h = query.shape
  s, k = key.shape[1], key.shape[2]
  scale = h ** -0.5 if scale is None else scale
  # Heads before positions on both sides, so the score matmul is a plain batched one.
  # Left to XLA, the transposes land on the [q_len, kv_len] scores in the backward pass.
  grouped = jnp.transpose(query.reshape(b, t, k, n // k, h), (0, 2, 3, 1, 4))  # [batch, kv_heads, group, q_len, head_dim]
  key = jnp.transpose(key, (0, 2, 1, 3))  # [batch, kv_heads, kv_len, head_dim]
  scores = jnp.einsum("bkgth,bksh->bkgts", grouped, key, preferred_element_type=jnp.float32)
  scores = scores.reshape(b, n, t, s) * scale  # [batch, heads, q_len, kv_len]
  if bias is not None:
    scores = scores + bias.astype(jnp.float32)
  mask = masks.combine(mask, masks.causal_mask(t, s) if is_causal else None)
  return masks.masked_softmax(scores, mask)


def weighted_values(weights: Array, value: Array) -> Array:
  """Attention output from explicit weights (e.g. after dropout).

  Args:
    weights: `[batch, heads, q_len, kv_len]`.
    value: `[batch, kv_len, kv_heads, head_dim]`, heads % kv_heads == 0.

  Returns:
    `[batch, q_len, heads, head_dim]` in `value.dtype`.
  """
  b, n, t, s = weights.shape
  k, h = value.shape[2], value.shape[3]
  grouped = weights.reshape(b, k, n // k, t, s).astype(value.dtype)
  value = jnp.transpose(value, (0, 2, 1, 3))  # [batch, kv_heads, kv_len, head_dim]
  out = jnp.einsum("bkgts,bksh->bkgth", grouped, value)  # [batch, kv_heads, group, q_len, head_dim]
  return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t, n, h)


def _reference(query, key, value, mask, bias, is_causal, scale):
  weights = dot_product_attention_weights(query, key, mask, bias, is_causal, scale)
  return weighted_values(weights, value).astype(query.dtype)


def _as_4d(x: Array | None, q_len: int, kv_len: int) -> Array | None:
  """A mask or bias as the `[batch|1, heads|1, q_len, kv_len]` array jax.nn expects."""
  if x is None:
    return None
  x = x.reshape((1,) * (4 - x.ndim) + x.shape)
  return jnp.broadcast_to(x, x.shape[:2] + (q_len, kv_len))


def _zero_unattended(out: Array, mask: Array | None, is_causal: bool, kv_len: int) -> Array:
  """Zeros for queries that may attend nothing (jax.nn and the kernels give them some
  average of the values; ours gives zeros)."""
  t = out.shape[1]
  live = masks.combine(mask, masks.causal_mask(t, kv_len) if is_causal else None)
  if live is None:
    return out
  live = jnp.any(_as_4d(live, t, kv_len), axis=-1)  # [batch or 1, heads or 1, q_len]
  return jnp.where(jnp.transpose(live, (0, 2, 1))[..., None], out, 0)


def _jax_nn(query, key, value, mask, bias, is_causal, scale, implementation):
  t, s = query.shape[1], key.shape[1]
  return jax.nn.dot_product_attention(
      query, key, value, bias=_as_4d(bias, t, s), mask=_as_4d(mask, t, s), scale=scale,
      is_causal=is_causal, implementation=implementation)


def check_device(implementation: str) -> None:
  """A ValueError if `implementation` needs a device JAX's backend is not."""
  platform, device = _DEVICES.get(implementation, (None, None))
  if platform and jax.default_backend() != platform:
    raise ValueError(
        f"implementation={implementation!r} needs {device}, but JAX's backend is "
        f"{jax.default_backend()!r}; use 'blockwise' or 'xla' here")


def dot_product_attention(query: Array, key: Array, value: Array,
                          mask: Array | None = None, bias: Array | None = None,
                          is_causal: bool = False, scale: float | None = None,
                          implementation: str = "reference",
                          block_q: int = blockwise.DEFAULT_BLOCK,
                          block_k: int = blockwise.DEFAULT_BLOCK,
                          interpret: bool = False) -> Array:
  """softmax(q k^T * scale + bias) v over heads, BTNH layout, softmax in float32.

  Args:
    query: `[batch, q_len, heads, head_dim]`.
    key, value: `[batch, kv_len, kv_heads, head_dim]`, heads % kv_heads == 0.
    mask: bool broadcastable to `[batch, heads, q_len, kv_len]`, True = attend.
    bias: float broadcastable to `[batch, heads, q_len, kv_len]`.
    is_causal: also mask key j > query i (top-left aligned).
    scale: defaults to 1/sqrt(head_dim).
    implementation: 'reference' (einsum, the ground truth), 'blockwise'
      (memory linear in length, any device), 'xla' or 'cudnn'
      (`jax.nn.dot_product_attention`; cudnn needs an NVIDIA GPU and fp16/bf16),
      'splash' (JAX's Pallas splash attention, TPU) or 'pallas_gpu' (JAX's
      Pallas Triton flash attention, GPU). The two kernels take `mask` only as
      a key-padding mask (shape broadcastable from `[batch or 1, 1, 1, kv_len]`,
      e.g. `masks.padding_mask(kv_valid)`), and `is_causal`; no bias. Anything
      else raises ValueError. Their results equal the reference's (a padded
      query still attends the valid keys, a query with none gets zeros).
    block_q, block_k: block sizes of the blockwise path and of the kernels;
      'splash' needs multiples of 128, 'pallas_gpu' powers of two (blocks
      shrink for short sequences; lengths are padded to whole blocks).
    interpret: run the kernel implementations in Pallas' interpreter (on any
      backend, e.g. CPU tests), skipping the device check; ignored by the rest.

  Returns:
    `[batch, q_len, heads, head_dim]` in `query.dtype`.
  """
  _check_shapes(query, key, value)
  if implementation == "reference":
    return _reference(query, key, value, mask, bias, is_causal, scale)
  if implementation == "blockwise":
    return blockwise.blockwise_attention(
        query, key, value, mask=mask, bias=bias, is_causal=is_causal, scale=scale,
        block_q=block_q, block_k=block_k)
  if implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown attention implementation {implementation!r}; "
                     f"known: {', '.join(IMPLEMENTATIONS)}")
  if implementation == "cudnn" and query.dtype not in (jnp.float16, jnp.bfloat16):
    raise ValueError(f"implementation='cudnn' needs float16 or bfloat16 inputs (cuDNN's "
                     f"flash attention), got {query.dtype}: set the model's dtype to "
                     f"bfloat16, or use 'xla'")
  if not (interpret and implementation in kernels.KERNELS):
    check_device(implementation)
  if implementation in kernels.KERNELS:
    out = kernels.attention(implementation, query, key, value, mask, bias, is_causal, scale,
                            block_q, block_k, interpret)
  else:
    out = _jax_nn(query, key, value, mask, bias, is_causal, scale, implementation)
  return _zero_unattended(out, mask, is_causal, key.shape[1])
