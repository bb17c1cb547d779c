"""CTC decoding: best path, prefix scoring, and joint CTC/attention beam search.

Inputs are a CTC head's `log_probs` float `[B, T, V]` (log_softmax over the
vocabulary at each encoder frame) and `lengths [B]`, the real frames of each
row. The blank is id 0, the vocabulary's PAD id.

Prefix scoring is Watanabe et al. 2017, "Hybrid CTC/attention architecture for
end-to-end speech recognition", Algorithm 2, in log space ((+) is log-add, x_t
the log-probs of frame t). For a prefix g, r^n_t(g) and r^b_t(g) are the log
probabilities that frames 1..t emit g and that frame t is a non-blank / a
blank. Extending g by a token c gives h = g + c with

    phi_{t-1} = r^b_{t-1}(g) (+) r^n_{t-1}(g)       (r^b_{t-1}(g) alone when c = last(g))
    r^n_t(h)  = (r^n_{t-1}(h) (+) phi_{t-1}) + x_t(c)
    r^b_t(h)  = (r^b_{t-1}(h) (+) r^n_{t-1}(h)) + x_t(blank)
    psi(h)    = (+)_{t=1..T} phi_{t-1} + x_t(c)      log p(the labelling starts with h)
    psi(g + <eos>) = r^n_T(g) (+) r^b_T(g)           log p(the labelling is g)

Frames are indexed 0..T with a virtual frame 0 before the first: r_0(<sos>) =
(-inf, 0) and r_0(g) = (-inf, -inf) for a non-empty g, so the paper's
initialisation at t = 1 is the recursion's first step. A padded frame
(t >= length) is read as a certain blank (log-prob 0 for blank, -inf for the
rest): r^n dies there, r^b carries r^n_L + r^b_L of the last real frame L on to
T, and psi gains nothing, so padding changes no score.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from attention_jax.attention import masks
from attention_jax.decode.beam import beam_search, repeat_for_beams
from attention_jax.decode.sampling import StepFn

Array = jax.Array
# Floor of psi and the score of tokens that are never candidates. Finite, so that
# psi(h) - psi(g) of an impossible prefix is no nan (nor is 0 * it, at ctc_weight 0),
# and far below any reachable log-probability.
_NEG = -1.0e10


class PrefixState(NamedTuple):
  """CTC state of the hypotheses `[N]`: forward variables and psi of g + c for every c."""
  r: Array  # float32 [N, T + 1, V, 2]: (r^n, r^b) of g + c over frames 0..T
  psi: Array  # float32 [N, V]: psi(g + c)


def mask_padding(log_probs: Array, lengths: Array, blank: int = 0) -> Array:
  """float32 `[B, T, V]` with every frame t >= lengths[b] a certain blank."""
  frames, vocab = log_probs.shape[1:]
  valid = masks.valid_from_lengths(lengths, frames)[..., None]  # [B, T, 1]
  certain_blank = jnp.where(jnp.arange(vocab) == blank, 0.0, -jnp.inf)
  return jnp.where(valid, log_probs.astype(jnp.float32), certain_blank)


def sos_forward(log_probs: Array, blank: int = 0) -> Array:
  """r(<sos>) `[B, T + 1, 2]`: r^n = -inf, r^b_t = sum_{tau <= t} x_tau(blank), r^b_0 = 0."""
  r_b = jnp.cumsum(log_probs[..., blank], axis=1)  # [B, T]
  r_b = jnp.concatenate([jnp.zeros_like(r_b[:, :1]), r_b], axis=1)  # [B, T + 1]
  return jnp.stack([jnp.full_like(r_b, -jnp.inf), r_b], axis=-1)


def full_score(r_prefix: Array) -> Array:
  """log p(labelling = g) = r^n_T(g) (+) r^b_T(g), `[N]`, from r(g) `[N, T + 1, 2]`."""
  return jnp.logaddexp(r_prefix[:, -1, 0], r_prefix[:, -1, 1])


def extend(log_probs: Array, r_prefix: Array, last: Array,
           blank: int = 0) -> tuple[Array, Array]:
  """Forward variables and psi of g + c for every token c at once (one scan over frames).

  Args:
    log_probs: `[N, T, V]`, padding already masked (`mask_padding`).
    r_prefix: r(g) `[N, T + 1, 2]`.
    last: int `[N]`, the last token of g (any id for <sos>: its r^n is -inf anyway).

  Returns:
    r(g + c) `[N, T + 1, V, 2]` and psi(g + c) `[N, V]`; the entries of c = blank
    mean nothing and <eos> takes `full_score(r_prefix)` instead of its psi.
  """
  n, frames, vocab = log_probs.shape
  r_n, r_b = r_prefix[..., 0], r_prefix[..., 1]  # [N, T + 1]
  repeat = (jnp.arange(vocab) == last[:, None])[:, None, :]  # [N, 1, V]
  # phi_{t-1} for t = 1..T: a repeated label needs a blank between its two emissions.
  phi = jnp.logaddexp(r_b[:, :-1, None], jnp.where(repeat, -jnp.inf, r_n[:, :-1, None]))
  psi = jax.nn.logsumexp(phi + log_probs, axis=1)  # [N, V]

  def frame(r_prev, inputs):  # r_prev = r_{t-1}(h) [N, V, 2]
    phi_t, x_t, x_blank = inputs  # [N, V], [N, V], [N]
    r_n_t = jnp.logaddexp(r_prev[..., 0], phi_t) + x_t
    r_b_t = jnp.logaddexp(r_prev[..., 1], r_prev[..., 0]) + x_blank[:, None]
    r_t = jnp.stack([r_n_t, r_b_t], axis=-1)
    return r_t, r_t

  r_0 = jnp.full((n, vocab, 2), -jnp.inf, jnp.float32)  # h is not empty: nothing at frame 0
  time_major = lambda x: jnp.swapaxes(x, 0, 1)
  _, r = lax.scan(frame, r_0, (time_major(phi), time_major(log_probs),
                               time_major(log_probs[..., blank])))
  r = jnp.concatenate([r_0[None], r], axis=0)  # [T + 1, N, V, 2]
  return time_major(r), psi


def _select(state: PrefixState, tokens: Array) -> tuple[Array, Array]:
  """r and psi of each hypothesis' own prefix: the row of the token the beam chose."""
  r = jnp.take_along_axis(state.r, tokens[:, None, None, None], axis=2)[:, :, 0]
  psi = jnp.take_along_axis(state.psi, tokens[:, None], axis=1)[:, 0]
  return r, psi  # [N, T + 1, 2], [N]


def initial_state(log_probs: Array, blank: int = 0) -> PrefixState:
  """The state before the first token, `[B, ...]`. The search first feeds BOS, so
  the BOS row must hold <sos> (psi = log 1); every row does, the simplest way."""
  r = sos_forward(log_probs, blank)[:, :, None, :]  # [B, T + 1, 1, 2]
  r = jnp.broadcast_to(r, r.shape[:2] + (log_probs.shape[-1], 2))
  return PrefixState(r, jnp.zeros((log_probs.shape[0], log_probs.shape[-1]), jnp.float32))


def greedy(log_probs: Array, lengths: Array, blank: int = 0, eos_id: int = 2,
           max_len: int | None = None, pad_id: int = 0) -> Array:
  """Best path decoding (Graves et al. 2006): the most probable token of each real
  frame, repeats merged, blanks removed.

  Returns int32 `[B, max_len]` in `decode.greedy`'s format: the tokens, EOS, then
  pads; a row with max_len tokens or more is cut there, without EOS. max_len None:
  T + 1, room for a token at every frame and the EOS.
  """
  batch, frames, _ = log_probs.shape
  max_len = frames + 1 if max_len is None else max_len
  best = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)  # [B, T]
  before = jnp.concatenate([jnp.full((batch, 1), blank, jnp.int32), best[:, :-1]], axis=1)
  keep = (best != blank) & (best != before) & masks.valid_from_lengths(lengths, frames)
  position = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, max_len)  # max_len: dropped
  rows = jnp.arange(batch)
  out = jnp.full((batch, max_len), pad_id, jnp.int32)
  out = out.at[rows[:, None], position].set(best, mode="drop")
  return out.at[rows, jnp.sum(keep, axis=1)].set(eos_id, mode="drop")


def _joint_step(att_step: StepFn | None, log_probs: Array, ctc_weight: float, bos_id: int,
                eos_id: int, blank: int) -> StepFn:
  """Step of the beam search: state (attention state, PrefixState), output the
  increments ctc_weight * (psi(g + c) - psi(g)) + (1 - ctc_weight) * log p_att(c | g)."""
  vocab = log_probs.shape[-1]
  never = (jnp.arange(vocab) == blank) | (jnp.arange(vocab) == bos_id)

  def step(state, tokens):
    att_state, ctc_state = state
    r_g, psi_g = _select(ctc_state, tokens)
    r, psi = extend(log_probs, r_g, tokens, blank)
    psi = jnp.maximum(psi.at[:, eos_id].set(full_score(r_g)), _NEG)
    scores = ctc_weight * (psi - psi_g[:, None])
    if att_step is not None:
      logits, att_state = att_step(att_state, tokens)
      if logits.shape[-1] != vocab:
        raise ValueError(f"joint_beam_search: the attention step's vocabulary "
                         f"({logits.shape[-1]}) differs from the CTC log-probs' ({vocab})")
      att = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
      scores = scores + (1.0 - ctc_weight) * att
    return jnp.where(never, _NEG, scores), (att_state, PrefixState(r, psi))

  return step


def joint_beam_search(att_step: StepFn | None, att_state: Any, log_probs: Array,
                      lengths: Array, batch: int, *, ctc_weight: float, beam_size: int,
                      bos_id: int, eos_id: int, max_len: int, alpha: float = 0.0,
                      blank: int = 0) -> tuple[Array, Array]:
  """Joint CTC/attention one-pass beam search (Watanabe et al. 2017, section III-B).

  A hypothesis g scores ctc_weight * log p_ctc(g) + (1 - ctc_weight) * log p_att(g),
  p_ctc(g) being the CTC prefix probability (exp psi; the full labelling's once g
  ends in EOS). Blank and BOS are never candidates. Built on `decode.beam_search`
  (GNMT length penalty `alpha`, EOS handling) with the CTC state beside the
  attention state, so reordering the beams reorders both.

  Args:
    att_step: the attention decoder's step `(state, tokens) -> (logits, state)`, or
      None with ctc_weight = 1 (CTC prefix beam search).
    att_state: its initial state, leaves `[batch, ...]` (unused when att_step is None).
    log_probs: float `[batch, T, V]` CTC log-probabilities; V is the decoder's vocabulary.
    lengths: int `[batch]`, real frames per row.
    ctc_weight: a Python float in [0, 1].

  Returns:
    as `beam_search`: sequences `[batch, beam_size, max_len]` and their scores.
  """
  ctc_weight = float(ctc_weight)
  if not 0.0 <= ctc_weight <= 1.0:
    raise ValueError(f"ctc_weight must lie in [0, 1], got {ctc_weight}")
  if att_step is None and ctc_weight != 1.0:
    raise ValueError(f"joint_beam_search without an attention step needs ctc_weight=1, "
                     f"got {ctc_weight}")
  if ctc_weight == 1.0:  # the decoder would not count: do not run it
    att_step, att_state = None, None
  log_probs = mask_padding(log_probs, lengths, blank)
  step = _joint_step(att_step, repeat_for_beams(log_probs, beam_size), ctc_weight, bos_id,
                     eos_id, blank)
  state = (att_state, initial_state(log_probs, blank))
  return beam_search(step, state, batch, beam_size=beam_size, bos_id=bos_id, eos_id=eos_id,
                     max_len=max_len, alpha=alpha, normalize=False)
