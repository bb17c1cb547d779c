"""Multi-head attention (Vaswani et al. 2017) with an explicit KV cache.

    head_i = Attention(x W_Q^i, y W_K^i, y W_V^i);  out = [head_1; ...; head_h] W_O

Self-attention when `inputs_kv` is None, cross-attention otherwise. The
attention itself is `attention.core.dot_product_attention`, its backend chosen
by the `implementation` field. Fewer key/value heads than query heads gives
grouped-query attention (Ainslie et al. 2023).

The cache is a plain pytree passed in and returned (never hidden in a Flax
collection): `init_cache(batch, max_len)` makes an empty one; a call with
`cache=` writes the new keys/values at each sequence's `index`, attends over
everything written so far, and returns the updated cache. Every leaf leads
with the batch axis, so beam search can reorder it.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from attention_jax.attention import core, masks

Array = jax.Array


class KVCache(NamedTuple):
  # Heads before positions, the layout the attention matmuls read: stored BTNH, every
  # decode step copied (transposed) the whole cache of every layer.
  key: Array  # [batch, kv_heads, max_len, head_dim]
  value: Array  # [batch, kv_heads, max_len, head_dim]
  index: Array  # int32 [batch]: positions written so far = next write position


def _write(cache: Array, new: Array, index: Array) -> Array:
  """cache[b, :, index[b]:index[b] + len] = new[b] (`new` is BTNH) for every sequence b."""
  new = jnp.swapaxes(new, 1, 2).astype(cache.dtype)  # [batch, kv_heads, len, head_dim]
  return jax.vmap(lambda c, x, i: lax.dynamic_update_slice_in_dim(c, x, i, axis=1))(
      cache, new, index)


class HeadsDense(nn.Module):
  """x [..., d_in] -> [..., heads, head_dim] (split) or [..., heads, head_dim] -> [..., d_out] (merge).

  Parameters are kept in their multi-axis shapes with logical names on every
  axis (nn.DenseGeneral flattens kernels inside its initialiser, which drops
  the per-axis partitioning), and the fan-in of the init counts only inputs.
  """
  features: tuple[int, ...]  # output axes: (heads, head_dim) to split, (d_out,) to merge
  in_names: tuple[str, ...]  # logical names of the contracted input axes
  out_names: tuple[str, ...]  # logical names of the output axes
  use_bias: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    n_in, n_out = len(self.in_names), len(self.features)
    shape = x.shape[-n_in:] + tuple(self.features)
    init = nn.initializers.lecun_normal(in_axis=tuple(range(n_in)),
                                        out_axis=tuple(range(n_in, n_in + n_out)))
    kernel = self.param("kernel", nn.with_logical_partitioning(
        init, self.in_names + self.out_names), shape, self.param_dtype)
    x, kernel = jnp.asarray(x, self.dtype), jnp.asarray(kernel, self.dtype)
    y = jax.lax.dot_general(x, kernel, ((tuple(range(x.ndim - n_in, x.ndim)),
                                         tuple(range(n_in))), ((), ())))
    if self.use_bias:
      bias = self.param("bias", nn.with_logical_partitioning(
          nn.initializers.zeros_init(), self.out_names), tuple(self.features), self.param_dtype)
      y = y + jnp.asarray(bias, self.dtype)
    return y


class MultiHeadAttention(nn.Module):
  """Multi-head attention over BTNH projections."""
  num_heads: int  # query heads
  head_dim: int  # size of each head's keys, queries and values (d_k = d_v)
  num_kv_heads: int | None = None  # None: = num_heads; fewer: grouped-query
  out_features: int | None = None  # None: the query input's feature size
  dropout_rate: float = 0.0  # on the attention weights (uses the explicit-weights path)
  implementation: str = "reference"  # 'reference' | 'blockwise' | 'xla' | 'cudnn'
  use_bias: bool = True  # biases on the projections, as in Vaswani et al.
  project_out: bool = True  # False: return the heads [batch, q_len, heads, head_dim] unprojected
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # parameter storage dtype

  @property
  def kv_heads(self) -> int:
    return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

  def init_cache(self, batch: int, max_len: int, dtype: Any = None) -> KVCache:
    """An empty cache for `max_len` positions (callable without parameters)."""
    shape = (batch, self.kv_heads, max_len, self.head_dim)
    dtype = self.dtype if dtype is None else dtype
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                   jnp.zeros((batch,), jnp.int32))

  def _project(self, x: Array, heads: int, name: str) -> Array:
    y = HeadsDense((heads, self.head_dim), ("embed",), ("heads", "kv"), self.use_bias,
                   self.dtype, self.param_dtype, name=name)(x)  # [batch, length, heads, head_dim]
    return nn.with_logical_constraint(y, ("batch", "length", "heads", "kv"))

  @nn.compact
  def __call__(self, inputs_q: Array, inputs_kv: Array | None = None,
               mask: Array | None = None, *, is_causal: bool = False,
               cache: KVCache | None = None,
               deterministic: bool = True) -> tuple[Array, KVCache | None]:
    """Attend from `inputs_q` to `inputs_kv` (or to itself).

    Args:
      inputs_q: `[batch, q_len, features]`.
      inputs_kv: `[batch, kv_len, features_kv]`, None for self-attention.
      mask: bool broadcastable to `[batch, heads, q_len, kv_len]` (kv_len =
        max_len with a cache), True = attend.
      is_causal: key j is hidden from query i when j > i (with a cache:
        j > index + i, which also hides the unwritten slots).
      cache: a `KVCache` for self-attention decoding, or None.
      deterministic: no dropout when True.

    Returns:
      (output `[batch, q_len, out_features]`, or the heads
      `[batch, q_len, heads, head_dim]` if not `project_out`; the updated
      cache or None).
      With the `intermediates` collection mutable, the weights
      `[batch, heads, q_len, kv_len]` are sown as `attention_weights`.
    """
    if self.num_heads % self.kv_heads:
      raise ValueError(
          f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.kv_heads})")
    self_attention = inputs_kv is None
    inputs_kv = inputs_q if self_attention else inputs_kv
    query = self._project(inputs_q, self.num_heads, "query")
    key = self._project(inputs_kv, self.kv_heads, "key")
    value = self._project(inputs_kv, self.kv_heads, "value")

    if cache is not None:
      if not self_attention:
        raise ValueError("a KV cache is for self-attention; cross-attention keys are fixed")
      cache = KVCache(_write(cache.key, key, cache.index), _write(cache.value, value, cache.index),
                      cache.index + query.shape[1])
      # BTNH views for core, whose own transposes back to BNTH cancel these.
      key, value = jnp.swapaxes(cache.key, 1, 2), jnp.swapaxes(cache.value, 1, 2)  # [batch, max_len, kv_heads, head_dim]
      # Slots at or past the new index are unwritten; causal hides them, else hide them here.
      offset = cache.index - query.shape[1]
      seen = masks.causal_mask(query.shape[1], key.shape[1], q_offset=offset)
      if not is_causal:
        seen = jnp.arange(key.shape[1]) < cache.index[:, None, None, None]
      mask = masks.combine(mask, seen)
      is_causal = False  # folded into the mask at the cache's offsets
    elif is_causal:
      mask = masks.combine(mask, masks.causal_mask(query.shape[1], key.shape[1]))
      is_causal = False

    use_dropout = self.dropout_rate > 0 and not deterministic
    if use_dropout or self.implementation == "reference" or self.is_mutable_collection(
        "intermediates"):
      weights = core.dot_product_attention_weights(query, key, mask)  # [batch, heads, q, kv]
      self.sow("intermediates", "attention_weights", weights)
    if use_dropout or self.implementation == "reference":
      if use_dropout:
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
      out = core.weighted_values(weights, value)
    else:
      out = core.dot_product_attention(query, key, value, mask=mask,
                                       implementation=self.implementation)
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    if not self.project_out:
      return out, cache
    features = self.out_features or inputs_q.shape[-1]
    out = HeadsDense((features,), ("heads", "kv"), ("embed",), self.use_bias, self.dtype,
                     self.param_dtype, name="out")(out)
    return out, cache  # [batch, q_len, features]
