"""JAX's own Pallas attention kernels, as `core.dot_product_attention` backends.

'splash': `jax.experimental.pallas.ops.tpu.splash_attention` (TPU).
'pallas_gpu': `jax.experimental.pallas.ops.gpu.attention.mha` (Triton, GPU).

Both take only what they compute exactly: `is_causal` and a key-padding mask
`[batch or 1, 1, 1, kv_len]`; no bias and no mask that varies over queries or
heads. Lengths are padded here to whole blocks (the padded keys hidden, the
padded queries sliced off). The kernels give a query that may attend nothing
some average of the values; core zeroes those rows, as it does for jax.nn.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas.ops.gpu import attention as gpu_attention
from jax.experimental.pallas.ops.tpu import splash_attention as splash_lib

Array = jax.Array

KERNELS = ("splash", "pallas_gpu")
TPU_LANES = 128  # splash tiles keys (and queries, in its backward pass) by whole lanes
TRITON_MIN_BLOCK = 16  # Triton's dot needs every matrix side >= 16


def _ceil_div(a: int, b: int) -> int:
  return -(-a // b)


def _pad(x: Array, length: int) -> Array:
  """`x` zero-padded along axis 1 (the length axis of BTNH and of `[batch, len]`) to `length`."""
  widths = [(0, 0)] * x.ndim
  widths[1] = (0, length - x.shape[1])
  return jnp.pad(x, widths)


def key_valid(mask: Array | None, bias: Array | None, batch: int, kv_len: int,
              implementation: str) -> Array | None:
  """The key-padding mask as bool `[batch, kv_len]` (None: every key valid).

  Raises ValueError for a bias, or for a mask whose query or head axis is not 1.
  """
  supported = (f"implementation={implementation!r} takes a key-padding mask "
               "[batch, 1, 1, kv_len] and is_causal")
  if bias is not None:
    raise ValueError(f"{supported}, not a bias; got a bias of shape {jnp.shape(bias)}; "
                     "use 'blockwise' or 'xla'")
  if mask is None:
    return None
  shape = (1,) * (4 - mask.ndim) + tuple(mask.shape)
  if (len(shape) != 4 or shape[1:3] != (1, 1) or shape[0] not in (1, batch)
      or shape[3] not in (1, kv_len)):
    raise ValueError(f"{supported}; got mask of shape {tuple(mask.shape)}; "
                     "use 'blockwise' or 'xla'")
  return jnp.broadcast_to(mask.reshape(shape[0], shape[3]), (batch, kv_len)).astype(bool)


def _hides_keys(valid: Array | None, q_len: int, kv_len: int, padded_kv_len: int,
                is_causal: bool) -> bool:
  """Whether some real query could see a key that must be hidden.

  Padded keys come after the real ones, so a causal query i < kv_len never reaches them.
  """
  return valid is not None or (padded_kv_len > kv_len and not (is_causal and q_len <= kv_len))


def _keep(valid: Array | None, batch: int, kv_len: int, padded_kv_len: int) -> Array:
  """bool `[batch, padded_kv_len]`: the real keys the mask lets through."""
  valid = jnp.ones((batch, kv_len), bool) if valid is None else valid
  return _pad(valid, padded_kv_len)


def splash(query: Array, key: Array, value: Array, valid: Array | None, is_causal: bool,
           scale: float, block_q: int, block_k: int, interpret: bool) -> Array:
  """Splash attention (TPU) over BTNH arrays; `valid`: bool `[batch, kv_len]` or None."""
  for name, size in (("block_q", block_q), ("block_k", block_k)):
    if size % TPU_LANES:
      raise ValueError(f"implementation='splash' needs {name} a multiple of {TPU_LANES} "
                       f"(the TPU's lane width), got {size}")
  b, t, n, _ = query.shape
  s = key.shape[1]
  # A short sequence gets one block of its own (lane-rounded) length, not a full block.
  bq = min(block_q, _ceil_div(t, TPU_LANES) * TPU_LANES)
  bk = min(block_k, _ceil_div(s, TPU_LANES) * TPU_LANES)
  tp, sp = _ceil_div(t, bq) * bq, _ceil_div(s, bk) * bk
  blocks = splash_lib.BlockSizes(
      block_q=bq, block_kv=bk, block_kv_compute=bk, block_q_dkv=bq, block_kv_dkv=bk,
      block_kv_dkv_compute=bk, block_q_dq=bq, block_kv_dq=bk)
  one_head = splash_lib.CausalMask((tp, sp)) if is_causal else splash_lib.FullMask((tp, sp))
  # interpret=True: Pallas' generic HLO interpreter. The TPU interpreter
  # (pltpu.InterpretParams) fails under the vmap over batch below in jax 0.10.2 (its
  # grid gains the batch axis but not a dimension semantic for it).
  kernel = splash_lib.make_splash_mha(
      splash_lib.MultiHeadMask([one_head] * n), block_sizes=blocks, head_shards=1,
      q_seq_shards=1, interpret=interpret)
  # Splash does not scale the scores, and takes one sequence as [heads, length, head_dim]
  # with kv_heads dividing heads (grouped-query attention as is).
  q = jnp.swapaxes(_pad((query * scale).astype(query.dtype), tp), 1, 2)
  k, v = (jnp.swapaxes(_pad(x, sp), 1, 2) for x in (key, value))
  if _hides_keys(valid, t, s, sp, is_causal):
    # Segment ids: every query 1, a key 1 if it may be attended, else 0.
    ids = splash_lib.SegmentIds(q=jnp.ones((b, tp), jnp.int32),
                                kv=_keep(valid, b, s, sp).astype(jnp.int32))
    out = jax.vmap(lambda q, k, v, ids: kernel(q, k, v, segment_ids=ids))(q, k, v, ids)
  else:
    out = jax.vmap(kernel)(q, k, v)
  return jnp.swapaxes(out, 1, 2)[:, :t].astype(query.dtype)


def _gpu_blocks(t: int, s: int, block_q: int, block_k: int):
  """The kernel's BlockSizes and the padded (q_len, kv_len).

  The fused backward kernel runs its key blocks and its query blocks on one grid axis,
  so both lengths must split into the same number of blocks: a short sequence gets
  smaller blocks (powers of two) rather than being padded to the long one's length.
  """
  n = max(_ceil_div(t, block_q), _ceil_div(s, block_k))

  def fit(length, block):
    return min(block, max(TRITON_MIN_BLOCK, pl.next_power_of_2(_ceil_div(length, n))))

  bq, bk = fit(t, block_q), fit(s, block_k)
  # The backward pass splits both blocks alike (equal block counts again), to about the
  # 32 of JAX's default backward blocks.
  split = max(1, min(bq, bk) // 32)
  blocks = gpu_attention.BlockSizes(
      block_q=bq, block_k=bk, block_q_dkv=bq // split, block_kv_dkv=bk // split,
      block_q_dq=bq // split, block_kv_dq=bk // split)
  return blocks, n * bq, n * bk


def _hide_keys(q: Array, k: Array, v: Array, keep: Array, scale: float):
  """q, k, v with one more head_dim column that hides the keys where `keep` is False.

  q' = [q, 1], k' = [k, 0] for a kept key and [0, c] for a hidden one, v' = [v, 0]: a
  kept key's score q.k is unchanged (the column adds exactly 0) and a hidden key's is
  c * scale, so negative that its exp underflows to exactly 0 beside any kept key's.
  The kernel has no bias, and its one segment-id array is shared by queries and keys,
  so segment ids cannot let a padded query attend the real keys as the reference does.
  The price: the kernel pads head_dim + 1 to a power of two (64 -> 128).
  """
  # Finite after the kernel multiplies by scale * log2(e) (an inf would give inf - inf),
  # and at least ~1e37 * scale below any kept score (float16: 32752 * scale), far past
  # the ~104 below the row's best at which float32's exp reaches 0.
  c = -0.5 * float(jnp.finfo(k.dtype).max) / max(1.0, scale)
  keep = keep[:, :, None, None]  # [batch, kv_len, 1, 1]
  column = lambda x, value: jnp.broadcast_to(jnp.asarray(value, x.dtype), x.shape[:-1] + (1,))
  q = jnp.concatenate([q, column(q, 1)], axis=-1)
  k = jnp.concatenate([jnp.where(keep, k, 0), column(k, jnp.where(keep, 0.0, c))], axis=-1)
  v = jnp.concatenate([v, column(v, 0)], axis=-1)
  return q, k, v


def pallas_gpu(query: Array, key: Array, value: Array, valid: Array | None, is_causal: bool,
               scale: float, block_q: int, block_k: int, interpret: bool) -> Array:
  """The Triton flash attention (GPU) over BTNH arrays; `valid`: bool `[batch, kv_len]` or None."""
  for name, size in (("block_q", block_q), ("block_k", block_k)):
    if size < 1 or size & (size - 1):
      raise ValueError(f"implementation='pallas_gpu' needs {name} a power of two "
                       f"(Triton's block shapes), got {size}")
  b, t, n, h = query.shape
  s, kv_heads = key.shape[1], key.shape[2]
  blocks, tp, sp = _gpu_blocks(t, s, block_q, block_k)
  # The kernel wants one key/value head per query head.
  key, value = (jnp.repeat(x, n // kv_heads, axis=2) for x in (key, value))
  q, k, v = _pad(query, tp), _pad(key, sp), _pad(value, sp)
  scale = float(scale)  # a static argument of the kernel
  if _hides_keys(valid, t, s, sp, is_causal):
    q, k, v = _hide_keys(q, k, v, _keep(valid, b, s, sp), scale)
  out = gpu_attention.mha(q, k, v, None, sm_scale=scale, causal=is_causal,
                          block_sizes=blocks, interpret=interpret)
  return out[:, :t, :, :h]


def attention(implementation: str, query: Array, key: Array, value: Array,
              mask: Array | None, bias: Array | None, is_causal: bool, scale: float | None,
              block_q: int, block_k: int, interpret: bool) -> Array:
  """`core.dot_product_attention` through kernel `implementation` (one of KERNELS)."""
  valid = key_valid(mask, bias, query.shape[0], key.shape[1], implementation)
  scale = query.shape[-1] ** -0.5 if scale is None else scale
  run = splash if implementation == "splash" else pallas_gpu
  return run(query, key, value, valid, is_causal, scale, block_q, block_k, interpret)
