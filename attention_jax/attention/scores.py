"""Attention score functions, one signature for all.

    score(query [..., q_len, d_q], keys [..., kv_len, d_k], **params) -> [..., q_len, kv_len]

Leading dimensions broadcast (batch, heads, ...). Parameters are passed
explicitly as arrays, so the same functions serve an RNN decoder (q_len = 1 per
step) and multi-head attention. Scores are unnormalised; `masks.masked_softmax`
turns them into weights.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
ScoreFn = Callable[..., Array]


def dot(query: Array, keys: Array) -> Array:
  """Dot product q^T k (Luong et al. 2015, "dot"). Needs d_q == d_k."""
  return jnp.einsum("...qd,...kd->...qk", query, keys)


def scaled_dot(query: Array, keys: Array, scale: float | None = None) -> Array:
  """Scaled dot product q^T k / sqrt(d) (Vaswani et al. 2017).

  `scale` overrides 1/sqrt(d), d being the feature size of the query.
  """
  if scale is None:
    scale = query.shape[-1] ** -0.5
  return dot(query, keys) * jnp.asarray(scale, query.dtype)


def general(query: Array, keys: Array, *, w: Array) -> Array:
  """Bilinear q^T W k (Luong et al. 2015, "general").

  Args:
    w: `[d_q, d_k]`.
  """
  return jnp.einsum("...qd,de,...ke->...qk", query, w, keys)


def additive(query: Array, keys: Array, *, w_q: Array, w_k: Array, v: Array,
             b: Array | None = None) -> Array:
  """Additive v^T tanh(W_q q + W_k k + b) (Bahdanau et al. 2015; Luong's "concat").

  Luong's concat v^T tanh(W [q; k]) is the same function with W = [W_q, W_k].
  Memory is `[..., q_len, kv_len, d_a]`: fine for RNN decoders, where q_len = 1.

  Args:
    w_q: `[d_q, d_a]`; w_k: `[d_k, d_a]`; v: `[d_a]`; b: optional `[d_a]`.
  """
  return additive_projected(query, keys @ w_k, w_q=w_q, v=v, b=b)


def additive_projected(query: Array, projected_keys: Array, *, w_q: Array, v: Array,
                       b: Array | None = None) -> Array:
  """`additive` from keys already projected: `projected_keys` = keys @ w_k `[..., kv_len, d_a]`.

  The key half does not depend on the query, so an RNN decoder computes it
  once per source sequence instead of at every step (for a 512-wide memory of
  30 positions that is most of the step's FLOPs, forward and backward).
  """
  q = query @ w_q  # [..., q_len, d_a]
  hidden = q[..., :, None, :] + projected_keys[..., None, :, :]  # [..., q_len, kv_len, d_a]
  if b is not None:
    hidden = hidden + b
  return jnp.tanh(hidden) @ v


def _unit(x: Array, eps: float) -> Array:
  # max(|x|, eps) keeps the gradient finite at x = 0 (d|x| is undefined there).
  norm_sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(norm_sq, eps * eps))


def cosine(query: Array, keys: Array, temperature: float = 1.0,
           eps: float = 1e-8) -> Array:
  """Cosine similarity q.k / (|q| |k| temperature) (Graves et al. 2014, NTM).

  Scores lie in [-1/temperature, 1/temperature]; a small temperature sharpens
  the softmax. Norms are clipped below at `eps`.
  """
  return dot(_unit(query, eps), _unit(keys, eps)) / temperature


def pearson(query: Array, keys: Array, temperature: float = 1.0,
            eps: float = 1e-8) -> Array:
  """Pearson correlation: cosine of the vectors centred on their feature mean."""
  centre = lambda x: x - jnp.mean(x, axis=-1, keepdims=True)
  return cosine(centre(query), centre(keys), temperature, eps)


def location(query: Array, keys: Array, *, w: Array, b: Array | None = None) -> Array:
  """Location-based W q (Luong et al. 2015): ignores the keys' contents.

  The softmax of these scores gives a_t = softmax(W_a h_t); the keys only set
  kv_len, which takes the first kv_len rows of W's output.

  Args:
    w: `[d_q, max_len]` with max_len >= kv_len; b: optional `[max_len]`.
  """
  kv_len, max_len = keys.shape[-2], w.shape[-1]
  if kv_len > max_len:
    raise ValueError(
        f"location score: kv_len {kv_len} exceeds the parameter's max_len {max_len} "
        f"(w has shape {w.shape})")
  logits = query @ w[:, :kv_len]  # [..., q_len, kv_len]
  if b is not None:
    logits = logits + b[:kv_len]
  batch = jnp.broadcast_shapes(query.shape[:-2], keys.shape[:-2])
  return jnp.broadcast_to(logits, batch + logits.shape[-2:])


def location_features(previous: Array, filters: Array) -> Array:
  """f = F * alpha (Chorowski et al. 2015): the previous alignment convolved over the keys.

  f[..., i, j, c] = sum_w filters[w, c] * previous[..., i, j + w - width // 2], zero
  outside [0, kv_len) ("same" padding; written as a cross-correlation, the usual
  deep-learning convolution, which is the same function of a learned F).

  Args:
    previous: `[..., q_len, kv_len]`, the alignment of the previous decoder step.
    filters: `[width, channels]`, width odd so the window is centred on j.

  Returns:
    `[..., q_len, kv_len, channels]`.
  """
  width, kv_len = filters.shape[0], previous.shape[-1]
  if width % 2 == 0:
    raise ValueError(f"location_aware score: filter width must be odd, got {width}")
  half = width // 2
  padded = jnp.pad(previous, [(0, 0)] * (previous.ndim - 1) + [(half, half)])
  # Width shifted copies of the alignment: a small, fixed number of slices, no conv op needed.
  windows = jnp.stack([padded[..., w:w + kv_len] for w in range(width)], axis=-1)
  return windows @ filters


def location_aware(query: Array, keys: Array, *, previous: Array, filters: Array, w_q: Array,
                   w_k: Array, w_f: Array, v: Array, b: Array | None = None) -> Array:
  """Location-aware ("hybrid") v^T tanh(W_q q + W_k k_j + W_f f_j + b) (Chorowski et al. 2015).

  `additive` plus features f = F * alpha_{i-1} of the previous step's alignment
  (`location_features`), so the score knows where the decoder attended last and
  can move forward from there: content alone lets a long input repeat or skip.

  Args:
    previous: `[..., q_len, kv_len]` the previous alignment (broadcasts like the query);
    filters: `[width, channels]` (width odd); w_q: `[d_q, d_a]`; w_k: `[d_k, d_a]`;
    w_f: `[channels, d_a]`; v: `[d_a]`; b: optional `[d_a]`.
  """
  return location_aware_projected(query, keys @ w_k, previous=previous, filters=filters,
                                  w_q=w_q, w_f=w_f, v=v, b=b)


def location_aware_projected(query: Array, projected_keys: Array, *, previous: Array,
                             filters: Array, w_q: Array, w_f: Array, v: Array,
                             b: Array | None = None) -> Array:
  """`location_aware` from projected keys: `projected_keys` = keys @ w_k `[..., kv_len, d_a]`.

  As for `additive_projected`, W_k k does not change between decoder steps; the
  location term does (it reads the previous alignment), so it is computed here.
  """
  q = query @ w_q  # [..., q_len, d_a]
  location = location_features(previous, filters) @ w_f  # [..., q_len, kv_len, d_a]
  hidden = q[..., :, None, :] + projected_keys[..., None, :, :] + location
  if b is not None:
    hidden = hidden + b
  return jnp.tanh(hidden) @ v


SCORES: dict[str, ScoreFn] = {
    "dot": dot,
    "scaled_dot": scaled_dot,
    "general": general,
    "additive": additive,
    "cosine": cosine,
    "pearson": pearson,
    "location": location,
    "location_aware": location_aware,
}


def get(name: str) -> ScoreFn:
  """The score function called `name`; a clear error lists the known names."""
  try:
    return SCORES[name]
  except KeyError:
    raise ValueError(
        f"unknown score function {name!r}; known: {', '.join(SCORES)}") from None
