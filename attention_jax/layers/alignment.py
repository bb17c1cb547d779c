"""Attention for an RNN decoder: global soft, Luong local-p and hard attention.

One module, `Alignment`, owns the parameters of the chosen score function and
calls the pure functions of `attention_jax.attention`; no score or softmax
formula is written here. A decoder step asks it for a context vector:

    query [batch, d_q] (or [batch, q_len, d_q]), keys [batch, kv_len, d_k],
    values [batch, kv_len, d_v], mask bool [batch, kv_len] (True = real)
    -> context [batch, d_v], weights [batch, kv_len] (float32)

Kinds:
  soft   Bahdanau / Luong global attention: weights = softmax(score), the
         context is their weighted sum (`core.attend`).
  local  Luong et al. 2015 local-p: a predicted position
         p_t = S_b * sigmoid(v_p^T tanh(W_p h_t)), S_b the source length of
         example b; the softmax of the scores inside the window
         |s - p_t| <= D, times the Gaussian exp(-(s - p_t)^2 / (2 sigma^2)),
         sigma = D / 2. The weights do not sum to one (as in the paper); p_t
         learns through the Gaussian.
  hard   Xu et al. 2015: one position sampled from softmax(score) with
         `self.make_rng('sample')` when not deterministic, the argmax when
         deterministic (`hard.hard_attend`). The context has no gradient with
         respect to the scores: train them with `log_prob` and
         `hard.reinforce_surrogate`.

Parameters and their logical axes: `general` w [d_q, d_k] ('hidden', 'memory');
`additive` w_q [d_q, d_a] ('hidden', 'attention'), w_k [d_k, d_a]
('memory', 'attention'), v [d_a] ('attention',); `location` w [d_q, max_len]
('hidden', 'length'); `location_aware` (Chorowski et al. 2015) additive's three and
filters [conv_width, conv_filters] ('conv_width', 'conv_filters'), w_f [conv_filters, d_a]
('conv_filters', 'attention'); local-p w_p [d_q, d_a] ('hidden', 'attention'),
v_p [d_a] ('attention',). dot, scaled_dot, cosine and pearson have none and
need d_q == d_k.

`location_aware` also reads the previous step's alignment: the caller passes it
as `previous=` (the decoder keeps the last step's `weights` in its state). With
kind 'local' or 'hard' it only changes the scores those kinds start from.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.attention import core, hard, masks, scores

Array = jax.Array

KINDS = ("soft", "local", "hard")
_SAME_SIZE = ("dot", "scaled_dot", "cosine", "pearson")  # scores without parameters
# Scores with a query-independent key half W_k k, and their from-projected-keys versions.
_PROJECTED = {"additive": scores.additive_projected,
              "location_aware": scores.location_aware_projected}


class AlignmentOutput(NamedTuple):
  context: Array  # [batch, (q_len,) d_v] in the compute dtype
  weights: Array  # float32 [batch, (q_len,) kv_len]: the heatmap (hard: the distribution sampled from)
  log_prob: Array | None = None  # hard only: float32 [batch, (q_len,)] log-prob of the chosen position
  index: Array | None = None  # hard only: int32 [batch, (q_len,)] the chosen position


class Alignment(nn.Module):
  """Scores a decoder query against encoder states and returns the context."""
  score: str = "general"  # any name in attention.scores.SCORES
  kind: str = "soft"  # 'soft' (global), 'local' (Luong local-p) or 'hard' (Xu et al.)
  attention_dim: int | None = None  # d_a of additive and of the local-p predictor; None: d_k
  max_len: int = 64  # location score: columns of W, the longest source it can attend
  window: int = 2  # local-p half-width D (>= 1); sigma = D / 2
  temperature: float = 1.0  # cosine / pearson: scores lie in [-1/T, 1/T]
  estimator: str = "reinforce"  # hard: 'reinforce' or 'gumbel' (see attention.hard)
  gumbel_temperature: float = 1.0  # hard with 'gumbel': tau of the relaxed weights
  dtype: Any = jnp.float32  # compute dtype (the softmax is always float32)
  param_dtype: Any = jnp.float32  # parameter storage dtype
  # location_aware: the convolution F over the previous alignment. 10 filters, as in
  # Chorowski et al. 2015. Their filters were much wider because they slid over
  # unsubsampled 10 ms speech frames; ours slide over characters or 4x-subsampled frames,
  # where the alignment moves a few positions per output step, so 15 (+-7 positions)
  # covers that move with a margin, at a small cost per step ([batch, kv_len, width]).
  conv_filters: int = 10
  conv_width: int = 15  # odd: the window is centred on the scored position

  def _param(self, name, shape, axes, init=nn.initializers.lecun_normal()):
    return self.param(name, nn.with_logical_partitioning(init, axes), shape, self.param_dtype)

  def _score_params(self, d_q: int, d_k: int) -> dict[str, Array]:
    """Creates the chosen score's parameters (keyword arguments of the pure function)."""
    if self.score == "general":
      return {"w": self._param("w", (d_q, d_k), ("hidden", "memory"))}
    if self.score in _PROJECTED:
      d_a = self.attention_dim or d_k
      params = {"w_q": self._param("w_q", (d_q, d_a), ("hidden", "attention")),
                "w_k": self._w_k(d_k),
                "v": self._param("v", (d_a,), ("attention",),
                                 nn.initializers.normal(d_a ** -0.5))}
      if self.score == "location_aware":
        params["filters"] = self._param("filters", (self.conv_width, self.conv_filters),
                                        ("conv_width", "conv_filters"))
        params["w_f"] = self._param("w_f", (self.conv_filters, d_a),
                                    ("conv_filters", "attention"))
      return params
    if self.score == "location":
      return {"w": self._param("w", (d_q, self.max_len), ("hidden", "length"))}
    if d_q != d_k:
      raise ValueError(
          f"score {self.score!r} compares query and keys directly: query size {d_q} must "
          f"equal key size {d_k} (use 'general', 'additive' or project the keys)")
    if self.score in ("cosine", "pearson"):
      return {"temperature": self.temperature}
    return {}

  def _w_k(self, d_k: int) -> Array:
    return self._param("w_k", (d_k, self.attention_dim or d_k), ("memory", "attention"))

  def project_keys(self, keys: Array) -> Array | None:
    """The query-independent half of the score, `[batch, kv_len, d_a]`, or None.

    `additive` and `location_aware` have one: W_k k. A decoder computes it once per source
    sequence and hands it to every step as `projected_keys`; projecting every
    key again at each step is most of a Bahdanau decoder's work (and its
    backward accumulates W_k's gradient step by step).
    """
    if self.score not in _PROJECTED:
      return None
    return self(None, keys, keys_only=True)

  def _predict_position(self, query: Array, lengths: Array) -> Array:
    """Local-p: p_t = S_b * sigmoid(v_p^T tanh(W_p h_t)), float32 [batch, q_len]."""
    d_a = self.attention_dim or query.shape[-1]
    w_p = self._param("w_p", (query.shape[-1], d_a), ("hidden", "attention"))
    v_p = self._param("v_p", (d_a,), ("attention",), nn.initializers.normal(d_a ** -0.5))
    query, w_p, v_p = nn.dtypes.promote_dtype(query, w_p, v_p, dtype=self.dtype)
    gate = jnp.tanh(query @ w_p) @ v_p  # [batch, q_len]
    return lengths[:, None] * jax.nn.sigmoid(gate.astype(jnp.float32))

  def _previous(self, previous: Array | None, single: bool) -> Array:
    """The previous alignment with a q_len axis, `[batch, q_len, kv_len]`."""
    if previous is None:
      raise ValueError(
          "Alignment(score='location_aware') needs the previous step's alignment: pass "
          "previous=<weights [batch, kv_len]> (a decoder keeps the last step's weights)")
    previous = jnp.asarray(previous)  # a jax.Array, so it is cast to the compute dtype
    return previous[:, None] if single else previous

  @nn.compact
  def __call__(self, query: Array, keys: Array, values: Array | None = None,
               mask: Array | None = None, *, deterministic: bool = True,
               projected_keys: Array | None = None, previous: Array | None = None,
               keys_only: bool = False) -> AlignmentOutput:
    """Attends `query` over `keys`/`values`.

    Args:
      query: `[batch, d_q]` (one decoder step) or `[batch, q_len, d_q]`.
      keys: `[batch, kv_len, d_k]`.
      values: `[batch, kv_len, d_v]`; defaults to `keys`.
      mask: bool `[batch, kv_len]`, True at real (non-pad) positions; local-p
        reads the source lengths from it, so real positions must come first.
      deterministic: hard attention takes the argmax instead of sampling.
      projected_keys: `project_keys(keys)`, computed once per source sequence;
        None: computed here when the score needs it.
      previous: `location_aware` only (other scores ignore it): the previous step's
        alignment, float `[batch, kv_len]` (`[batch, q_len, kv_len]` with a q_len axis).
      keys_only: return `project_keys(keys)` (how that method reaches the parameters).

    Returns:
      An `AlignmentOutput`; without a q_len axis in the query, none in the outputs.
    """
    if keys_only:
      keys_c, w_k = nn.dtypes.promote_dtype(keys, self._w_k(keys.shape[-1]), dtype=self.dtype)
      return keys_c @ w_k  # [batch, kv_len, d_a]
    if self.kind not in KINDS:
      raise ValueError(f"Alignment.kind={self.kind!r} is unknown; known: {', '.join(KINDS)}")
    score_fn = scores.get(self.score)
    values = keys if values is None else values
    single = query.ndim == 2
    if single:
      query = query[:, None]  # [batch, 1, d_q]
    batch, kv_len = keys.shape[0], keys.shape[1]
    if mask is None:
      mask = jnp.ones((batch, kv_len), bool)
    params = self._score_params(query.shape[-1], keys.shape[-1])
    if self.score == "location_aware":
      params["previous"] = self._previous(previous, single)
    arrays = {k: v for k, v in params.items() if isinstance(v, jax.Array)}
    query_c, keys_c, values_c, *cast = nn.dtypes.promote_dtype(
        query, keys, values, *arrays.values(), dtype=self.dtype)
    params.update(zip(arrays, cast))
    if projected_keys is not None and self.score in _PROJECTED:
      del params["w_k"]
      logits = _PROJECTED[self.score](query_c, projected_keys, **params)
    else:
      logits = score_fn(query_c, keys_c, **params)  # [batch, q_len, kv_len]
    row_mask = mask[:, None, :]  # [batch, 1, kv_len]

    log_prob = index = None
    if self.kind == "soft":
      context, weights = core.attend(logits, values_c, row_mask)
    elif self.kind == "hard":
      rng = None if deterministic else self.make_rng("sample")
      out = hard.hard_attend(rng, logits, values_c, row_mask, self.estimator,
                             self.gumbel_temperature)
      context, weights, log_prob, index = out.context, out.weights, out.log_prob, out.index
    else:
      if self.window < 1:
        raise ValueError(f"local attention needs window >= 1, got {self.window}")
      lengths = jnp.sum(mask, axis=-1).astype(jnp.float32)  # [batch]
      p = self._predict_position(query, lengths)[..., None]  # [batch, q_len, 1]
      pos = jnp.arange(kv_len, dtype=jnp.float32)  # [kv_len]
      in_window = jnp.abs(pos - p) <= self.window  # [batch, q_len, kv_len]
      align = masks.masked_softmax(logits, masks.combine(row_mask, in_window))
      sigma = self.window / 2.0
      weights = align * jnp.exp(-jnp.square(pos - p) / (2.0 * sigma ** 2))  # [batch, q_len, kv_len]
      context = jnp.einsum("bqk,bkd->bqd", weights.astype(values_c.dtype), values_c)

    if single:
      squeeze = lambda x: None if x is None else x[:, 0]
      context, weights, log_prob, index = map(squeeze, (context, weights, log_prob, index))
    return AlignmentOutput(context, weights, log_prob, index)
