"""Transformer blocks (Vaswani et al. 2017), positional encodings and a layer stack.

One `TransformerBlock` serves every position in the family: encoder block
(self-attention), decoder block (causal self-attention + cross-attention) and
decoder-only LM block (causal self-attention). `pre_ln` moves the layer norm
inside the residual branch (Xiong et al. 2020); post-LN is the original.
`weighted=True` swaps the self-attention and feed-forward sublayers for the
branched attention of the Weighted Transformer (Ahmed et al. 2017).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.layers.common import dense
from attention_jax.layers.multihead import KVCache, MultiHeadAttention

Array = jax.Array


def sinusoidal_table(max_len: int, features: int) -> np.ndarray:
  """PE[pos, 2i] = sin(pos / 10000^(2i/d)), PE[pos, 2i+1] = cos(same): `[max_len, features]`."""
  positions = np.arange(max_len)[:, None]
  rates = 1.0 / 10000 ** (np.arange(0, features, 2) / features)
  table = np.zeros((max_len, features), np.float32)
  table[:, 0::2] = np.sin(positions * rates)
  table[:, 1::2] = np.cos(positions * rates)[:, : features // 2]
  return table


class AddPositions(nn.Module):
  """Adds sinusoidal or learned position embeddings to `[batch, length, features]`."""
  kind: str = "sinusoidal"  # 'sinusoidal' (fixed) or 'learned'
  max_len: int = 512  # positions beyond it are an error
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array, positions: Array | None = None) -> Array:
    """`positions`: int `[batch, length]` (decoding offsets); default 0..length-1."""
    length, features = x.shape[-2], x.shape[-1]
    if positions is None:
      if length > self.max_len:
        raise ValueError(f"sequence length {length} exceeds the positions' max_len {self.max_len}")
      positions = jnp.arange(length)[None]
    if self.kind == "sinusoidal":
      table = jnp.asarray(sinusoidal_table(self.max_len, features))
    elif self.kind == "learned":
      table = self.param("embedding", nn.with_logical_partitioning(
          nn.initializers.normal(0.02), (None, "embed")), (self.max_len, features),
          self.param_dtype)
    else:
      raise ValueError(f"unknown positions kind {self.kind!r}; known: sinusoidal, learned")
    return x + jnp.take(table, positions, axis=0).astype(x.dtype)


class FeedForward(nn.Module):
  """Position-wise max(0, x W1 + b1) W2 + b2 (ReLU, or GELU)."""
  d_ff: int  # hidden size
  activation: Callable[[Array], Array] = nn.relu
  dropout_rate: float = 0.0  # on the hidden activations
  deterministic: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = self.activation(dense(self.d_ff, ("embed", "mlp"), dtype=self.dtype,
                              param_dtype=self.param_dtype, name="wi")(x))
    h = nn.with_logical_constraint(h, ("batch", "length", "mlp"))  # [batch, length, d_ff]
    h = nn.Dropout(self.dropout_rate)(h, deterministic=self.deterministic)
    return dense(x.shape[-1], ("mlp", "embed"), dtype=self.dtype, param_dtype=self.param_dtype,
                 name="wo")(h)


class BranchedAttention(nn.Module):
  """Weighted Transformer sublayer: sum_i alpha_i FFN_i(kappa_i head_i W_O^i).

  Each head is projected to the model size on its own (W_O split by head),
  scaled by kappa, passed through its own feed-forward branch and mixed by
  alpha. Ahmed et al. constrain kappa and alpha to sum to one; here they are
  softmaxes of learned logits, which keeps that constraint by construction.
  """
  d_ff: int  # hidden size of each branch's feed-forward network
  dropout_rate: float = 0.0
  deterministic: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, heads: Array, features: int) -> Array:
    """`heads`: `[batch, length, num_heads, head_dim]` -> `[batch, length, features]`."""
    n, h = heads.shape[-2:]

    def param(name, shape, axes, init=nn.initializers.lecun_normal()):
      return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)

    zeros = nn.initializers.zeros_init()
    w_o = param("w_o", (n, h, features), ("heads", "kv", "embed"))
    kappa = jax.nn.softmax(param("kappa_logits", (n,), ("heads",), zeros))
    alpha = jax.nn.softmax(param("alpha_logits", (n,), ("heads",), zeros))
    w1 = param("w1", (n, features, self.d_ff), ("heads", "embed", "mlp"))
    b1 = param("b1", (n, self.d_ff), ("heads", "mlp"), zeros)
    w2 = param("w2", (n, self.d_ff, features), ("heads", "mlp", "embed"))
    b2 = param("b2", (n, features), ("heads", "embed"), zeros)
    cast = lambda a: jnp.asarray(a, self.dtype)
    branch = jnp.einsum("btnh,nhd->btnd", heads, cast(w_o)) * cast(kappa)[:, None]  # [batch, length, heads, features]
    hidden = nn.relu(jnp.einsum("btnd,ndf->btnf", branch, cast(w1)) + cast(b1))  # [batch, length, heads, d_ff]
    hidden = nn.Dropout(self.dropout_rate)(hidden, deterministic=self.deterministic)
    out = jnp.einsum("btnf,nfd->btnd", hidden, cast(w2)) + cast(b2)  # [batch, length, heads, features]
    return jnp.einsum("btnd,n->btd", out, cast(alpha))


class TransformerBlock(nn.Module):
  """Self-attention [+ cross-attention] + feed-forward, each with residual and layer norm."""
  num_heads: int
  head_dim: int
  d_ff: int
  num_kv_heads: int | None = None  # fewer than num_heads: grouped-query attention
  causal: bool = False  # decoder blocks: no attention to later positions
  pre_ln: bool = True  # layer norm inside the residual branch (False: after the sum)
  dropout_rate: float = 0.1  # residual and feed-forward dropout (Vaswani's P_drop)
  attention_dropout_rate: float = 0.0  # on attention weights
  weighted: bool = False  # Weighted Transformer branched self-attention
  implementation: str = "reference"  # attention backend, see attention/core.py
  deterministic: bool = True  # no dropout
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def _residual(self, x: Array, sublayer: Callable[[Array], Array], name: str) -> Array:
    norm = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=f"{name}_norm")
    drop = nn.Dropout(self.dropout_rate, deterministic=self.deterministic)
    if self.pre_ln:
      return x + drop(sublayer(norm(x)))
    return norm(x + drop(sublayer(x)))

  def _attention(self, name: str, project_out: bool = True) -> MultiHeadAttention:
    return MultiHeadAttention(
        num_heads=self.num_heads, head_dim=self.head_dim, num_kv_heads=self.num_kv_heads,
        dropout_rate=self.attention_dropout_rate, implementation=self.implementation,
        project_out=project_out, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  @nn.compact
  def __call__(self, x: Array, cache: KVCache | None = None, encoded: Array | None = None,
               self_mask: Array | None = None,
               cross_mask: Array | None = None) -> tuple[Array, KVCache | None]:
    """
    Args:
      x: `[batch, length, features]`.
      cache: this block's self-attention `KVCache` when decoding, else None.
      encoded: encoder output `[batch, src_len, features]` for cross-attention.
      self_mask, cross_mask: bool masks broadcastable to `[batch, heads, q, kv]`.

    Returns:
      (`[batch, length, features]`, the updated cache or None).
    """
    features = x.shape[-1]
    new_cache = cache

    def self_attention(y):
      nonlocal new_cache
      out, new_cache = self._attention("self_attention", project_out=not self.weighted)(
          y, mask=self_mask, is_causal=self.causal, cache=cache,
          deterministic=self.deterministic)
      if self.weighted:
        out = BranchedAttention(self.d_ff // self.num_heads, self.dropout_rate,
                                self.deterministic, self.dtype, self.param_dtype,
                                name="branches")(out, features)
      return out

    x = self._residual(x, self_attention, "self_attention")
    if encoded is not None:
      x = self._residual(
          x, lambda y: self._attention("cross_attention")(
              y, encoded, mask=cross_mask, deterministic=self.deterministic)[0],
          "cross_attention")
    if not self.weighted:  # the branches already hold the feed-forward networks
      x = self._residual(x, FeedForward(self.d_ff, dropout_rate=self.dropout_rate,
                                        deterministic=self.deterministic, dtype=self.dtype,
                                        param_dtype=self.param_dtype, name="ffn"), "ffn")
    x = nn.with_logical_constraint(x, ("batch", "length", "embed"))
    return x, new_cache


class TransformerStack(nn.Module):
  """`num_layers` blocks, optionally under `nn.scan` (one compiled body) and `nn.remat`.

  Caches are a tuple with one `KVCache` per layer; with `scan_layers` they are
  one `KVCache` whose leaves are `[batch, num_layers, ...]` (batch stays first).
  """
  num_layers: int
  block: dict  # TransformerBlock fields, shared by every layer
  scan_layers: bool = False  # compile one block body and loop it
  remat: bool = False  # recompute activations in the backward pass
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def init_cache(self, batch: int, max_len: int) -> Any:
    head = MultiHeadAttention(num_heads=self.block["num_heads"], head_dim=self.block["head_dim"],
                              num_kv_heads=self.block.get("num_kv_heads"), dtype=self.dtype,
                              parent=None)  # a helper, not a submodule
    one = head.init_cache(batch, max_len)
    if self.scan_layers:
      return jax.tree.map(lambda a: jnp.repeat(a[:, None], self.num_layers, axis=1), one)
    return tuple(one for _ in range(self.num_layers))

  @nn.compact
  def __call__(self, x: Array, cache: Any = None, encoded: Array | None = None,
               self_mask: Array | None = None, cross_mask: Array | None = None,
               deterministic: bool = True) -> tuple[Array, Any]:
    block = TransformerBlock
    if self.remat:
      block = nn.remat(block, prevent_cse=not self.scan_layers)
    kwargs = dict(self.block, deterministic=deterministic, dtype=self.dtype,
                  param_dtype=self.param_dtype)
    if self.scan_layers:
      scanned = nn.scan(
          block, variable_axes={"params": 0, "intermediates": 0},
          split_rngs={"params": True, "dropout": True},
          in_axes=(1, nn.broadcast, nn.broadcast, nn.broadcast), out_axes=1,
          length=self.num_layers, metadata_params={nn.PARTITION_NAME: "layers"})
      x, cache = scanned(**kwargs, name="layers")(x, cache, encoded, self_mask, cross_mask)
    else:
      caches = []
      for i in range(self.num_layers):
        x, c = block(**kwargs, name=f"layer_{i}")(
            x, None if cache is None else cache[i], encoded, self_mask, cross_mask)
        caches.append(c)
      cache = None if cache is None else tuple(caches)
    if self.block.get("pre_ln", True):  # pre-LN leaves the residual stream unnormalised
      x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="final_norm")(x)
    return x, cache
