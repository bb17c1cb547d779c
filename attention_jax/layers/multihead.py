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

Under beam search the k hypotheses of a sequence share their group's k cache
rows instead of copying them at every step: `KVCache.owner` records, for each
hypothesis and position, which row of the group holds that key/value, and a
reorder moves only `owner` and `index` (copying every layer's cache made beam
search 7x greedy per step). Such a cache holds a group's k rows side by side,
values `[batch, kv_heads, k * max_len, head_dim]` and keys transposed,
`[batch, kv_heads, head_dim, k * max_len]` (`share_rows`), so one plain matmul per
group and head scores the k queries against all k rows, reading the cache once; the
one-hot `owner` then keeps each hypothesis' own history (BENCHMARKS.md). This path
is einsum attention whatever `implementation` says; the other cache path runs the
Pallas kernels' ('splash', 'pallas_gpu') steps as 'xla', since the kernels take no
mask at the cache's offsets.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from attention_jax.attention import core, kernels, masks

Array = jax.Array


class KVCache(NamedTuple):
  # Heads before positions, the layout the attention matmuls read: stored BTNH, every
  # decode step copied (transposed) the whole cache of every layer.
  key: Array  # [batch, kv_heads, max_len, head_dim]; beam search: see share_rows
  value: Array  # [batch, kv_heads, max_len, head_dim]; beam search: see share_rows
  index: Array  # int32 [batch] (beam search: [batch * k]): positions written = next write position
  # Beam search only (`decode.beam`, `share_rows`), else None: one-hot [batch * k, max_len,
  # k], the row of the hypothesis' group of k that holds its key/value at each position.
  owner: Array | None = None


def share_rows(cache: KVCache, k: int) -> KVCache:
  """A cache of `batch * k` rows (hypothesis n = b * k + j in row n, each `[..., max_len,
  head_dim]`) as beam search holds it: group b's k rows side by side on the positions axis,
  values `[batch, ..., k * max_len, head_dim]` and keys `[batch, ..., head_dim, k * max_len]`
  (transposed: the scores' matmul then reads them as they lie, 3-4x faster than packing
  them at every step), every hypothesis reading row 0 (set `owner` to choose). A layers
  axis after the batch axis (scanned layers) is kept."""
  def group(x):
    n, *middle, length, h = x.shape
    x = jnp.moveaxis(x.reshape(n // k, k, *middle, length, h), 1, -3)
    return x.reshape(n // k, *middle, k * length, h)
  owner_shape = cache.key.shape[:-3] + cache.key.shape[-2:-1]  # [batch * k, (layers,) max_len]
  return KVCache(jnp.swapaxes(group(cache.key), -1, -2), group(cache.value), cache.index,
                 jax.nn.one_hot(jnp.zeros(owner_shape, jnp.int32), k, dtype=jnp.float32))


def _write(cache: Array, new: Array, index: Array) -> Array:
  """cache[b, :, index[b]:index[b] + len] = new[b] (`new` is BTNH) for every sequence b."""
  new = jnp.swapaxes(new, 1, 2).astype(cache.dtype)  # [batch, kv_heads, len, head_dim]
  return jax.vmap(lambda c, x, i: lax.dynamic_update_slice_in_dim(c, x, i, axis=1))(
      cache, new, index)


def _write_shared(cache: Array, new: Array, index: Array, k: int, axis: int) -> Array:
  """Hypothesis n's one new position (`new` `[batch * k, 1, kv_heads, head_dim]`) into its
  own row n mod k of group n // k, at `index[n]` (clamped to the row, as `_write` clamps),
  positions on `axis` (-2: values, -1: transposed keys) of a `share_rows` cache."""
  rows = jnp.arange(new.shape[0])
  length = cache.shape[axis] // k
  position = rows % k * length + jnp.minimum(index, length - 1)
  at = (rows // k, slice(None)) + (slice(None),) * (axis == -1) + (position,)
  return cache.at[at].set(new[:, 0].astype(cache.dtype))


def _own(owner: Array | None, index: Array) -> Array | None:
  """owner[n, index[n]] = one-hot(n mod k): the row a hypothesis writes is its own."""
  if owner is None:
    return None
  n, k = owner.shape[0], owner.shape[-1]
  mine = jax.nn.one_hot(jnp.arange(n) % k, k, dtype=owner.dtype)[:, None]  # [n, 1, k]
  return jax.vmap(lambda o, m, i: lax.dynamic_update_slice_in_dim(o, m, i, axis=0))(
      owner, mine, index)


def _shared_row_attention(query: Array, cache: KVCache, mask: Array | None):
  """One decode step of hypotheses whose histories lie in their group's rows (`owner`).

  Args:
    query: `[batch * k, 1, heads, head_dim]`.
    cache: updated, `share_rows`' layout, with `owner` `[batch * k, max_len, k]`.
    mask: bool broadcastable to `[batch * k, heads, 1, max_len]`, or None.

  Returns:
    (output `[batch * k, 1, heads, head_dim]`, weights `[batch * k, heads, 1, max_len]`).
  """
  n, t, heads, h = query.shape
  if t != 1:
    raise ValueError(f"a beam-search cache takes one position per step, got {t}")
  (length, k), kv_heads = cache.owner.shape[1:], cache.key.shape[1]
  b, group = n // k, heads // kv_heads
  # One [k * group, head_dim] x [head_dim, k * max_len] matmul per sequence and kv head
  # scores every hypothesis i against every row j of its group, reading the cache once
  # (per-hypothesis matrix-vector products read it k times).
  q = jnp.moveaxis(query.reshape(b, k, kv_heads, group, h), 1, 2)  # [b, g, i, r, h]
  every_row = jnp.einsum("bgirh,bghx->bgirx", q, cache.key, preferred_element_type=jnp.float32)
  every_row = every_row.reshape(b, kv_heads, k, group, k, length)  # [b, g, i, r, j, s]
  mine = jnp.swapaxes(cache.owner.reshape(b, k, length, k) > 0, 2, 3)  # [b, i, j, s]
  pick = mine[:, None, :, None]  # [b, 1, i, 1, j, s]
  scores = jnp.where(pick, every_row, 0.0).sum(axis=4) * h ** -0.5  # [b, g, i, r, s]
  seen = (jnp.arange(length) < cache.index[:, None])[:, None, None]  # [n, 1, 1, max_len]
  full = jnp.broadcast_to(masks.combine(mask, seen), (n, heads, 1, length))
  full = jnp.moveaxis(full.reshape(b, k, kv_heads, group, length), 1, 2)  # [b, g, i, r, s]
  weights = masks.masked_softmax(scores, full)
  by_row = jnp.where(pick, weights[:, :, :, :, None], 0.0).astype(cache.value.dtype)
  by_row = by_row.reshape(b, kv_heads, k, group, k * length)
  out = jnp.einsum("bgirx,bgxh->bgirh", by_row, cache.value)  # [b, g, i, r, h]
  out = jnp.moveaxis(out, 2, 1).reshape(n, 1, heads, h)
  return out, jnp.moveaxis(weights, 2, 1).reshape(n, heads, 1, length)


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
  implementation: str = "reference"  # one of core.IMPLEMENTATIONS
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
      if cache.owner is not None:
        k = cache.owner.shape[-1]
        cache = KVCache(_write_shared(cache.key, key, cache.index, k, axis=-1),
                        _write_shared(cache.value, value, cache.index, k, axis=-2),
                        cache.index + query.shape[1], _own(cache.owner, cache.index))
        out, weights = _shared_row_attention(query, cache, mask)
        self.sow("intermediates", "attention_weights", weights)
        return self._output(out, inputs_q), cache
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
    # Otherwise is_causal goes to core as it is: the kernels take no dense causal mask.

    implementation = self.implementation
    if cache is not None and implementation in kernels.KERNELS:
      # The kernels take no mask at the cache's offsets (and one decode query fills no block).
      implementation = "xla"

    use_dropout = self.dropout_rate > 0 and not deterministic
    if use_dropout or implementation == "reference" or self.is_mutable_collection(
        "intermediates"):
      weights = core.dot_product_attention_weights(  # [batch, heads, q, kv]
          query, key, mask, is_causal=is_causal)
      self.sow("intermediates", "attention_weights", weights)
    if use_dropout or implementation == "reference":
      if use_dropout:
        weights = nn.Dropout(self.dropout_rate)(weights, deterministic=False)
      out = core.weighted_values(weights, value)
    else:
      out = core.dot_product_attention(query, key, value, mask=mask, is_causal=is_causal,
                                       implementation=implementation)
    return self._output(out, inputs_q), cache

  def _output(self, out: Array, inputs_q: Array) -> Array:
    """The heads `[batch, q_len, heads, head_dim]`, merged to `[batch, q_len, features]`."""
    out = nn.with_logical_constraint(out, ("batch", "length", "heads", "kv"))
    if not self.project_out:
      return out
    features = self.out_features or inputs_q.shape[-1]
    return HeadsDense((features,), ("heads", "kv"), ("embed",), self.use_bias, self.dtype,
                      self.param_dtype, name="out")(out)
