"""Memory-efficient attention: online softmax over key/value blocks.

Rabe & Staats 2021 ("Self-attention does not need O(n^2) memory") and
Dao et al. 2022/2023 (FlashAttention 1/2). The forward pass walks over query
blocks; for each it folds key/value blocks into a running max `m`, a running
sum `l` and an unnormalised output `o`, so only one `[block_q, block_k]` score
tile per head exists at a time. It saves the output and the row log-sum-exp;
the hand-written backward pass (a `custom_vjp`) recomputes each tile from them.
Memory is linear in sequence length, forward and backward.

Causal attention skips the tiles above the diagonal: the loop bounds depend on
the block index, so those tiles are never computed. Of the rest, only the
tiles on the diagonal (and the last key block, when keys are padded) build a
causal/padding mask; the others need none. Lengths that are not a multiple of
the block size are padded; padded keys are masked out, padded queries are
dropped.

Inside, q, k and v are transposed once to heads-before-positions, so every
tile's products are plain batched matmuls; the backward pass computes each
tile transposed ([block_k, block_q]), which makes dV = P^T dO and
dK = dS^T Q plain too.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array

DEFAULT_BLOCK = 128  # best of 64-256 (square and not) for causal fwd+bwd at T=2048 on a 2-core CPU
# A finite "minus infinity": rows that are fully masked so far keep finite
# running maxima, so m_old - m_new is never inf - inf.
_NEG = float(jnp.finfo(jnp.float32).min)


class _Static(NamedTuple):
  scale: float
  is_causal: bool
  kv_len: int  # true key length: keys at and after it are padding
  block_q: int
  block_k: int


def _pad_axis(x: Array, axis: int, size: int, value) -> Array:
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return jnp.pad(x, pad, constant_values=value)


def _prepare_4d(x: Array | None, name: str, dims: tuple[int, int, int, int],
                padded: tuple[int, int], fill, kv_heads: int) -> Array | None:
  """Mask/bias to `[b|1, kv_heads|1, group|1, t_pad|1, s_pad|1]`, padded with `fill`."""
  if x is None:
    return None
  b, n, t, s = dims
  x = jnp.asarray(x)
  x = x.reshape((1,) * (4 - x.ndim) + x.shape)
  for axis, full in enumerate(dims):
    if x.shape[axis] not in (1, full):
      raise ValueError(
          f"{name} of shape {x.shape} does not broadcast to [batch, heads, q_len, "
          f"kv_len] = {list(dims)}")
  for axis, size in ((2, padded[0]), (3, padded[1])):
    if x.shape[axis] > 1:
      x = _pad_axis(x, axis, size, fill)
  if x.shape[1] == n:
    return x.reshape(x.shape[0], kv_heads, n // kv_heads, *x.shape[2:])
  return x[:, :, None]


def _tile(x: Array | None, q_start, k_start, st: _Static) -> Array | None:
  """The `[.., block_q|1, block_k|1]` tile of a grouped mask or bias."""
  if x is None:
    return None
  if x.shape[3] > 1:
    x = lax.dynamic_slice_in_dim(x, q_start, st.block_q, axis=3)
  if x.shape[4] > 1:
    x = lax.dynamic_slice_in_dim(x, k_start, st.block_k, axis=4)
  return x


def _tile_scores(q_blk, k_blk, bias, q_start, k_start, st: _Static, transposed=False):
  """Scores `[batch, kv_heads, group, block_q, block_k]` in float32 (`transposed`: the last two swapped)."""
  if transposed:
    s = jnp.einsum("bksh,bkgqh->bkgsq", k_blk, q_blk, preferred_element_type=jnp.float32)
  else:
    s = jnp.einsum("bkgqh,bksh->bkgqs", q_blk, k_blk, preferred_element_type=jnp.float32)
  s = s * st.scale
  bias_tile = _tile(bias, q_start, k_start, st)
  if bias_tile is not None:
    s = s + (jnp.swapaxes(bias_tile, -1, -2) if transposed else bias_tile).astype(jnp.float32)
  return s


def _tile_valid(mask, q_start, k_start, st: _Static, edge: bool):
  """Where a tile's scores count, or None where all of them do.

  `edge` tiles straddle the causal diagonal or hold padded keys; the others
  (almost all of them) only need the caller's mask, if any.
  """
  valid = None
  if edge:
    k_pos = k_start + jnp.arange(st.block_k)
    valid = (k_pos < st.kv_len)[None, :]  # [1, block_k]
    if st.is_causal:
      q_pos = q_start + jnp.arange(st.block_q)
      valid = valid & (k_pos[None, :] <= q_pos[:, None])  # [block_q, block_k]
  mask_tile = _tile(mask, q_start, k_start, st)
  if mask_tile is not None:
    valid = mask_tile if valid is None else valid & mask_tile
  return valid


def _kv_blocks_for(i, st: _Static, num_k: int):
  """Key blocks [0, full) wholly visible to query block i, then [full, hi) edge blocks."""
  padded = st.kv_len < num_k * st.block_k
  if not st.is_causal:
    return num_k - int(padded), num_k
  hi = jnp.minimum(num_k, ((i + 1) * st.block_q - 1) // st.block_k + 1)
  # Block j is below the diagonal for every query of block i iff (j + 1) * bk - 1 <= i * bq.
  full = jnp.minimum(hi - int(padded), (i * st.block_q + 1) // st.block_k)
  return jnp.maximum(full, 0), hi


def _q_blocks_for(j, st: _Static, num_q: int, num_k: int):
  """Query blocks [lo, full) that see key block j at its edge, then [full, num_q) wholly."""
  padded = st.kv_len < num_k * st.block_k
  last_padded = (j == num_k - 1) & padded
  if not st.is_causal:
    return 0, jnp.where(last_padded, num_q, 0)
  lo = jnp.minimum(num_q, (j * st.block_k) // st.block_q)
  full = jnp.minimum(num_q, ((j + 1) * st.block_k - 1 + st.block_q - 1) // st.block_q)
  return lo, jnp.where(last_padded, num_q, jnp.maximum(full, lo))


def _forward(q, k, v, mask, bias, st: _Static):
  """q `[batch, kv_heads, group, t_pad, head_dim]`, k/v `[batch, kv_heads, s_pad, head_dim]`.

  Returns the output (q's layout and dtype) and the row log-sum-exp
  `[batch, kv_heads, group, t_pad]` (float32).
  """
  b, kh, g, t_pad, h = q.shape
  num_q, num_k = t_pad // st.block_q, k.shape[2] // st.block_k

  def q_block(i, buffers):
    out, lse = buffers
    q_start = i * st.block_q
    q_blk = lax.dynamic_slice_in_dim(q, q_start, st.block_q, axis=3)

    def kv_block(edge):
      def body(j, carry):
        o, m, l = carry
        k_start = j * st.block_k
        k_blk = lax.dynamic_slice_in_dim(k, k_start, st.block_k, axis=2)
        v_blk = lax.dynamic_slice_in_dim(v, k_start, st.block_k, axis=2)
        s = _tile_scores(q_blk, k_blk, bias, q_start, k_start, st)
        valid = _tile_valid(mask, q_start, k_start, st, edge)
        if valid is not None:
          s = jnp.where(valid, s, _NEG)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        p = jnp.exp(s - m_new[..., None])
        if valid is not None:  # a row with nothing valid yet has s = m_new = _NEG: exp gives 1
          p = jnp.where(valid, p, 0.0)
        rescale = jnp.exp(m - m_new)
        l = l * rescale + jnp.sum(p, axis=-1)
        pv = jnp.einsum("bkgqs,bksh->bkgqh", p.astype(v.dtype), v_blk,
                        preferred_element_type=jnp.float32)
        return o * rescale[..., None] + pv, m_new, l
      return body

    o = jnp.zeros((b, kh, g, st.block_q, h), jnp.float32)
    m = jnp.full((b, kh, g, st.block_q), _NEG, jnp.float32)
    l = jnp.zeros((b, kh, g, st.block_q), jnp.float32)
    full, hi = _kv_blocks_for(i, st, num_k)
    carry = lax.fori_loop(0, full, kv_block(False), (o, m, l))
    o, m, l = lax.fori_loop(full, hi, kv_block(True), carry)
    seen = l > 0  # False on rows that may attend nothing: their output is 0
    o = o / jnp.where(seen, l, 1.0)[..., None]
    out = lax.dynamic_update_slice_in_dim(out, o.astype(out.dtype), q_start, axis=3)
    row_lse = jnp.where(seen, m + jnp.log(jnp.where(seen, l, 1.0)), 0.0)
    lse = lax.dynamic_update_slice_in_dim(lse, row_lse, q_start, axis=3)
    return out, lse

  out = jnp.zeros(q.shape, q.dtype)
  lse = jnp.zeros((b, kh, g, t_pad), jnp.float32)
  return lax.fori_loop(0, num_q, q_block, (out, lse))


def _sum_to(x: Array, shape: tuple[int, ...]) -> Array:
  """Sum `x` over the axes where `shape` has size 1 (the broadcast axes)."""
  axes = tuple(a for a, n in enumerate(shape) if n == 1 and x.shape[a] != 1)
  return jnp.sum(x, axis=axes, keepdims=True)


def _backward(q, k, v, mask, bias, out, lse, d_out, st: _Static):
  """Gradients of q, k, v and bias, tile by tile, from the saved output and lse (layouts of `_forward`)."""
  b, kh, g, t_pad, h = q.shape
  num_q, num_k = t_pad // st.block_q, k.shape[2] // st.block_k
  # D_i = sum_h dO_ih O_ih = sum_j P_ij dP_ij: the softmax Jacobian's diagonal term.
  delta = jnp.einsum("bkgqh,bkgqh->bkgq", d_out.astype(jnp.float32), out.astype(jnp.float32))

  def kv_block(j, grads):
    dq, dk, dv, dbias = grads
    k_start = j * st.block_k
    k_blk = lax.dynamic_slice_in_dim(k, k_start, st.block_k, axis=2)
    v_blk = lax.dynamic_slice_in_dim(v, k_start, st.block_k, axis=2)

    def q_block(edge):
      def body(i, carry):
        dq, dk_blk, dv_blk, dbias = carry
        q_start = i * st.block_q
        q_blk = lax.dynamic_slice_in_dim(q, q_start, st.block_q, axis=3)
        do_blk = lax.dynamic_slice_in_dim(d_out, q_start, st.block_q, axis=3)
        lse_blk = lax.dynamic_slice_in_dim(lse, q_start, st.block_q, axis=3)
        delta_blk = lax.dynamic_slice_in_dim(delta, q_start, st.block_q, axis=3)
        # The tile transposed, [.., block_k, block_q]: dV = P^T dO and dK = dS^T Q are then
        # plain matmuls, and only dQ = dS K needs dS the other way round.
        s_t = _tile_scores(q_blk, k_blk, bias, q_start, k_start, st, transposed=True)
        p_t = jnp.exp(s_t - lse_blk[..., None, :])  # [b, kh, g, bk, bq]
        valid = _tile_valid(mask, q_start, k_start, st, edge)
        if valid is not None:
          p_t = jnp.where(jnp.swapaxes(valid, -1, -2), p_t, 0.0)
        dv_blk += jnp.einsum("bkgsq,bkgqh->bksh", p_t.astype(do_blk.dtype), do_blk,
                             preferred_element_type=jnp.float32)
        dp_t = jnp.einsum("bksh,bkgqh->bkgsq", v_blk, do_blk, preferred_element_type=jnp.float32)
        ds_t = p_t * (dp_t - delta_blk[..., None, :])  # d loss / d scores (after scale and bias)
        if dbias is not None:
          tile_shape = _tile(dbias, q_start, k_start, st).shape
          ds = jnp.swapaxes(ds_t, -1, -2)
          tile = _tile(dbias, q_start, k_start, st) + _sum_to(ds, tile_shape)
          dbias = lax.dynamic_update_slice(
              dbias, tile, (0, 0, 0, q_start if dbias.shape[3] > 1 else 0,
                            k_start if dbias.shape[4] > 1 else 0))
        dq_blk = jnp.einsum("bkgsq,bksh->bkgqh", ds_t, k_blk,
                            preferred_element_type=jnp.float32) * st.scale
        dq = lax.dynamic_update_slice_in_dim(
            dq, lax.dynamic_slice_in_dim(dq, q_start, st.block_q, axis=3) + dq_blk,
            q_start, axis=3)
        dk_blk += jnp.einsum("bkgsq,bkgqh->bksh", ds_t, q_blk,
                             preferred_element_type=jnp.float32) * st.scale
        return dq, dk_blk, dv_blk, dbias
      return body

    zeros = jnp.zeros((b, kh, st.block_k, h), jnp.float32)
    lo, full = _q_blocks_for(j, st, num_q, num_k)
    carry = lax.fori_loop(lo, full, q_block(True), (dq, zeros, zeros, dbias))
    dq, dk_blk, dv_blk, dbias = lax.fori_loop(full, num_q, q_block(False), carry)
    dk = lax.dynamic_update_slice_in_dim(dk, dk_blk, k_start, axis=2)
    dv = lax.dynamic_update_slice_in_dim(dv, dv_blk, k_start, axis=2)
    return dq, dk, dv, dbias

  grads = (jnp.zeros(q.shape, jnp.float32), jnp.zeros(k.shape, jnp.float32),
           jnp.zeros(v.shape, jnp.float32),
           None if bias is None else jnp.zeros(bias.shape, jnp.float32))
  dq, dk, dv, dbias = lax.fori_loop(0, num_k, kv_block, grads)
  return (dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype),
          None if bias is None else dbias.astype(bias.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5,))
def _attention(q, k, v, mask, bias, st: _Static):
  return _forward(q, k, v, mask, bias, st)[0]


def _attention_fwd(q, k, v, mask, bias, st):
  out, lse = _forward(q, k, v, mask, bias, st)
  return out, (q, k, v, mask, bias, out, lse)


def _attention_bwd(st, residuals, d_out):
  q, k, v, mask, bias, out, lse = residuals
  dq, dk, dv, dbias = _backward(q, k, v, mask, bias, out, lse, d_out, st)
  return dq, dk, dv, None, dbias


_attention.defvjp(_attention_fwd, _attention_bwd)


def blockwise_attention(query: Array, key: Array, value: Array,
                        mask: Array | None = None, bias: Array | None = None,
                        is_causal: bool = False, scale: float | None = None,
                        block_q: int = DEFAULT_BLOCK,
                        block_k: int = DEFAULT_BLOCK) -> Array:
  """Exact attention in blocks; same contract as `core.dot_product_attention`.

  Args:
    query: `[batch, q_len, heads, head_dim]`.
    key, value: `[batch, kv_len, kv_heads, head_dim]`, heads % kv_heads == 0.
    mask: bool broadcastable to `[batch, heads, q_len, kv_len]`, True = attend.
      A key-padding mask `[batch, 1, 1, kv_len]` costs O(kv_len) memory; a
      dense mask is itself O(q_len * kv_len).
    bias: float broadcastable to `[batch, heads, q_len, kv_len]` (differentiable).
    is_causal: mask key j > query i (top-left aligned) and skip those tiles.
    scale: defaults to 1/sqrt(head_dim).
    block_q, block_k: tile sizes (clipped to the lengths).

  Returns:
    `[batch, q_len, heads, head_dim]` in `query.dtype`.
  """
  b, t, n, h = query.shape
  s, kh = key.shape[1], key.shape[2]
  if block_q < 1 or block_k < 1:
    raise ValueError(f"block sizes must be positive, got block_q={block_q}, block_k={block_k}")
  block_q, block_k = min(block_q, t), min(block_k, s)
  t_pad, s_pad = -(-t // block_q) * block_q, -(-s // block_k) * block_k
  st = _Static(h ** -0.5 if scale is None else float(scale), bool(is_causal), s,
               block_q, block_k)
  dims = (b, n, t, s)
  mask = _prepare_4d(mask, "mask", dims, (t_pad, s_pad), False, kh)
  bias = _prepare_4d(bias, "bias", dims, (t_pad, s_pad), 0.0, kh)
  # Heads before positions (BNTH) inside: every tile's matmuls are then plain batched
  # ones, where the BTNH layout made XLA transpose each q, k and v tile it sliced.
  q = _pad_axis(query, 1, t_pad, 0).reshape(b, t_pad, kh, n // kh, h)
  q = jnp.transpose(q, (0, 2, 3, 1, 4))  # [batch, kv_heads, group, t_pad, head_dim]
  k = jnp.transpose(_pad_axis(key, 1, s_pad, 0), (0, 2, 1, 3))  # [batch, kv_heads, s_pad, head_dim]
  v = jnp.transpose(_pad_axis(value, 1, s_pad, 0), (0, 2, 1, 3))
  out = _attention(q, k, v, mask, bias, st)  # [batch, kv_heads, group, t_pad, head_dim]
  return jnp.transpose(out, (0, 3, 1, 2, 4)).reshape(b, t_pad, n, h)[:, :t]
