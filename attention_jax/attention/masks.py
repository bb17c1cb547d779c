"""Boolean attention masks (True = attend) and a NaN-safe masked softmax.

Every mask here is broadcastable to `[batch, heads, q_len, kv_len]`; a mask that
does not depend on the batch or the heads has size 1 there. `combine` ANDs any
number of them. Positions are 0-based; a query at index i sits at absolute
position `i + q_offset`, so a decode step with a cache passes its offset.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def valid_from_lengths(lengths: Array, length: int) -> Array:
  """Valid (non-pad) positions from sequence lengths.

  Args:
    lengths: int `[batch]`, number of real tokens per sequence.
    length: the padded length.

  Returns:
    bool `[batch, length]`, True where `position < lengths[b]`.
  """
  return jnp.arange(length)[None, :] < jnp.asarray(lengths)[:, None]


def valid_from_tokens(tokens: Array, pad_id: int = 0) -> Array:
  """Valid positions from token ids: bool `[batch, length]`, True where not `pad_id`."""
  return jnp.asarray(tokens) != pad_id


def padding_mask(kv_valid: Array, q_valid: Array | None = None) -> Array:
  """Padding mask from per-position validity.

  Args:
    kv_valid: bool `[batch, kv_len]`, True for real key positions.
    q_valid: optional bool `[batch, q_len]`; pad queries then attend nothing
      (their rows are fully masked and give zero weights).

  Returns:
    bool `[batch, 1, q_len or 1, kv_len]`.
  """
  mask = kv_valid[:, None, None, :]
  if q_valid is not None:
    mask = mask & q_valid[:, None, :, None]
  return mask


def _relative(q_len: int, kv_len: int | None, q_offset) -> Array:
  """Key position minus query position, `[batch or 1, 1, q_len, kv_len]`.

  `q_offset` is a scalar or an int `[batch]` (per-sequence decode positions).
  """
  kv_len = q_len if kv_len is None else kv_len
  offset = jnp.asarray(q_offset).reshape(-1, 1, 1, 1)  # [batch or 1, 1, 1, 1]
  q_pos = jnp.arange(q_len)[:, None] + offset
  return jnp.arange(kv_len)[None, :] - q_pos


def causal_mask(q_len: int, kv_len: int | None = None, q_offset=0) -> Array:
  """Causal mask: query i attends key j iff `j <= i + q_offset`.

  With the default offset the mask is aligned at the top left, as
  `jax.nn.dot_product_attention(is_causal=True)` does for q_len != kv_len;
  a KV-cache decode step passes its position (scalar or `[batch]`) as offset.

  Returns:
    bool `[batch or 1, 1, q_len, kv_len]`.
  """
  return _relative(q_len, kv_len, q_offset) <= 0


def local_mask(q_len: int, kv_len: int | None = None, window: int = 0,
               q_offset=0) -> Array:
  """Local window mask: query i attends key j iff `|i + q_offset - j| <= window`.

  Combine with `causal_mask` for a sliding window over the past only.

  Returns:
    bool `[batch or 1, 1, q_len, kv_len]`.
  """
  if window < 0:
    raise ValueError(f"local window must be >= 0, got {window}")
  return jnp.abs(_relative(q_len, kv_len, q_offset)) <= window


def prefix_mask(prefix_lengths: Array, length: int) -> Array:
  """Prefix-LM mask: bidirectional inside the prefix, causal after it.

  Query i attends key j iff `j <= i` or `j < prefix_lengths[b]`.

  Args:
    prefix_lengths: int `[batch]`.
    length: sequence length (queries and keys are the same sequence).

  Returns:
    bool `[batch, 1, length, length]`.
  """
  in_prefix = valid_from_lengths(prefix_lengths, length)  # [batch, length]
  return causal_mask(length) | in_prefix[:, None, None, :]


def segment_mask(q_segment_ids: Array, kv_segment_ids: Array | None = None) -> Array:
  """Packed-sequence mask: attend only within the same segment.

  Args:
    q_segment_ids: int `[batch, q_len]`.
    kv_segment_ids: int `[batch, kv_len]`, defaults to `q_segment_ids`.

  Returns:
    bool `[batch, 1, q_len, kv_len]`.
  """
  kv_segment_ids = q_segment_ids if kv_segment_ids is None else kv_segment_ids
  return q_segment_ids[:, None, :, None] == kv_segment_ids[:, None, None, :]


def combine(*masks: Array | None) -> Array | None:
  """Logical AND of the masks that are not None (None if all are None)."""
  result = None
  for mask in masks:
    if mask is not None:
      result = mask if result is None else jnp.logical_and(result, mask)
  return result


def _shifted_exp(scores: Array, mask: Array | None, axis: int):
  """Max-shifted scores, their masked exponentials and the row sums (float32).

  Masked entries are replaced by a finite minimum before the max, so a fully
  masked row has a finite shift and an exact zero sum instead of inf - inf.
  The shift is a constant of the softmax, hence stop_gradient.
  """
  x = scores.astype(jnp.float32)
  if mask is not None:
    x = jnp.where(mask, x, jnp.finfo(jnp.float32).min)
  shift = jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
  shift = jnp.where(jnp.isfinite(shift), shift, 0.0)
  x = x - shift
  e = jnp.exp(x)
  if mask is not None:
    e = jnp.where(mask, e, 0.0)
  return x, e, jnp.sum(e, axis=axis, keepdims=True)


def masked_softmax(scores: Array, mask: Array | None = None, axis: int = -1) -> Array:
  """Softmax over `axis` in float32 that ignores masked entries.

  Args:
    scores: `[..., kv_len]` logits (any float dtype).
    mask: bool, broadcastable to `scores`; True = attend.

  Returns:
    float32 weights of `scores`' shape. A fully masked row is all zeros and
    its gradient is zero (never NaN).
  """
  _, e, total = _shifted_exp(scores, mask, axis)
  return e / jnp.where(total > 0, total, 1.0)


def masked_log_softmax(scores: Array, mask: Array | None = None, axis: int = -1) -> Array:
  """Log of `masked_softmax`: -inf at masked entries and on fully masked rows."""
  x, e, total = _shifted_exp(scores, mask, axis)
  log_weights = x - jnp.log(jnp.where(total > 0, total, 1.0))
  keep = total > 0 if mask is None else jnp.logical_and(mask, total > 0)
  return jnp.where(keep, log_weights, -jnp.inf)
