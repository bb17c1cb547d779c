"""Batched beam search with length normalisation and EOS handling.

Uses the step interface of `decode/sampling.py`. Each batch entry keeps
`beam_size` alive hypotheses and `beam_size` finished ones. A finished
hypothesis is scored by log p / lp(length), with the GNMT length penalty
lp(n) = ((5 + n) / 6)^alpha (Wu et al. 2016); alpha = 0 ranks by log p.
Every step looks at the top 2k continuations: those among the first k that
end in EOS are finished, and the best k that do not stay alive, so the beam
never runs dry (as in fairseq's search). The search stops at `max_len` or once no alive
hypothesis can beat the finished ones.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from attention_jax.decode.sampling import StepFn
from attention_jax.layers.multihead import KVCache, share_rows

Array = jax.Array
_NEG = -1.0e9  # a "minus infinity" that keeps arithmetic finite


def length_penalty(length: Array, alpha: float) -> Array:
  return ((5.0 + length) / 6.0) ** alpha


def _is_cache(x: Any) -> bool:
  return isinstance(x, KVCache)


def repeat_for_beams(state: Any, beam_size: int) -> Any:
  """Repeat every leaf `[batch, ...]` to `[batch * beam_size, ...]` (beam axis inner).

  A `KVCache` becomes the shared-row cache of `multihead.share_rows`: the beams of a
  sequence share their group's rows, and every position starts in the first row.
  """
  def repeat(x):
    if _is_cache(x) and x.owner is not None:
      raise ValueError("the state already holds a beam-search cache (KVCache.owner)")
    x = jax.tree.map(lambda a: jnp.repeat(a, beam_size, axis=0), x)
    return share_rows(x, beam_size) if _is_cache(x) else x
  return jax.tree.map(repeat, state, is_leaf=_is_cache)


def _gather_state(state: Any, indices: Array, beam_size: int) -> Any:
  """Reorder beams: leaves `[batch * beam_size, ...]`, indices `[batch, beam_size]`.

  One row gather on the flat axis: `take_along_axis` on the beam axis became a
  select over all k beams of every KV cache, k times the memory traffic. Caches
  keep their keys and values in place: only which rows a hypothesis reads moves.
  """
  batch = indices.shape[0]
  rows = (jnp.arange(batch)[:, None] * beam_size + indices).reshape(-1)  # [batch * beam_size]
  take = lambda x: jnp.take(x, rows, axis=0, mode="clip")
  def reorder(x):
    if _is_cache(x) and x.owner is not None:
      return x._replace(index=take(x.index), owner=take(x.owner))
    return take(x)
  return jax.tree.map(reorder, state, is_leaf=_is_cache)


def _take(seqs: Array, indices: Array) -> Array:
  """seqs `[batch, n, len]`, indices `[batch, m]` -> `[batch, m, len]`."""
  return jnp.take_along_axis(seqs, indices[:, :, None], axis=1)


def beam_search(step_fn: StepFn, state: Any, batch: int, *, beam_size: int, bos_id: int,
                eos_id: int, max_len: int, alpha: float = 0.6,
                pad_id: int = 0, normalize: bool = True) -> tuple[Array, Array]:
  """Beam search.

  Args:
    step_fn: `(state, tokens [batch * beam]) -> (logits [batch * beam, vocab], state)`.
    state: the initial decode state for `batch` sequences (leaves `[batch, ...]`);
      it is repeated for the beams here.
    normalize: the step returns logits, turned into log-probabilities here. False:
      it returns each token's log-score increment, used as it is (a combined score
      such as joint CTC/attention decoding, `decode.ctc`). The early stop assumes
      increments <= 0, as log-probabilities are: a hypothesis' score never rises.

  Returns:
    sequences int `[batch, beam_size, max_len]` (EOS included, then pads), best
    first, and their scores `[batch, beam_size]` (log p / lp(length)). Where
    fewer than `beam_size` hypotheses finished, sequences cut at `max_len`
    take the remaining places.
  """
  k = beam_size
  state = repeat_for_beams(state, k)
  alive_seq = jnp.full((batch, k, max_len), pad_id, jnp.int32)
  # Only the first beam is live at the start: the others would duplicate it.
  alive_logp = jnp.tile(jnp.array([0.0] + [_NEG] * (k - 1)), (batch, 1))
  done_seq = jnp.full((batch, k, max_len), pad_id, jnp.int32)
  done_score = jnp.full((batch, k), _NEG)
  last = jnp.full((batch * k,), bos_id, jnp.int32)

  def cond(carry):
    t, _, _, alive_logp, _, done_score, _ = carry
    # The best an alive hypothesis can still reach: its log p at the longest length.
    best_alive = jnp.max(alive_logp, axis=1) / length_penalty(max_len, alpha)
    can_improve = best_alive > jnp.min(done_score, axis=1)
    return (t < max_len) & jnp.any(can_improve)

  def body(carry):
    t, last, alive_seq, alive_logp, done_seq, done_score, state = carry
    logits, state = step_fn(state, last)
    logp = logits.astype(jnp.float32)  # [batch * k, vocab]
    if normalize:
      logp = jax.nn.log_softmax(logp, axis=-1)
    vocab = logp.shape[-1]
    total = alive_logp[:, :, None] + logp.reshape(batch, k, vocab)
    top_logp, top_flat = lax.top_k(total.reshape(batch, k * vocab), 2 * k)  # [batch, 2k]
    top_beam, top_token = top_flat // vocab, (top_flat % vocab).astype(jnp.int32)
    top_seq = _take(alive_seq, top_beam).at[:, :, t].set(top_token)  # [batch, 2k, len]
    ends = top_token == eos_id

    # Alive: the best k continuations that do not end here.
    alive_rank = jnp.where(ends, _NEG, top_logp)
    new_logp, pick = lax.top_k(alive_rank, k)  # [batch, k]
    alive_seq = _take(top_seq, pick)
    state = _gather_state(state, jnp.take_along_axis(top_beam, pick, axis=1), k)
    last = jnp.take_along_axis(top_token, pick, axis=1).reshape(-1)

    # Finished: those ending now among the top k (the plain beam; so a beam of one is
    # greedy), merged with the old k; keep the best k.
    in_beam = jnp.arange(2 * k) < k
    new_score = jnp.where(ends & in_beam, top_logp / length_penalty(t + 1.0, alpha), _NEG)
    merged_score = jnp.concatenate([done_score, new_score], axis=1)
    merged_seq = jnp.concatenate([done_seq, top_seq], axis=1)
    done_score, keep = lax.top_k(merged_score, k)
    done_seq = _take(merged_seq, keep)
    return t + 1, last, alive_seq, new_logp, done_seq, done_score, state

  carry = (0, last, alive_seq, alive_logp, done_seq, done_score, state)
  t, _, alive_seq, alive_logp, done_seq, done_score, _ = lax.while_loop(cond, body, carry)
  # Unfinished hypotheses fill the places finished ones leave empty. When the loop
  # stopped early they rank below every finished one (their bound did), else t = max_len.
  alive_score = alive_logp / length_penalty(jnp.asarray(t, jnp.float32), alpha)
  scores, keep = lax.top_k(jnp.concatenate([done_score, alive_score], axis=1), k)
  return _take(jnp.concatenate([done_seq, alive_seq], axis=1), keep), scores
