"""CTC best path, prefix scores and joint CTC/attention beam search against brute force
over every alignment path."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.decode import beam_search, ctc, joint_beam_search

BLANK, BOS, EOS = 0, 1, 2


def _log_probs(seed, batch, frames, vocab):
  logits = np.random.default_rng(seed).normal(size=(batch, frames, vocab)) * 1.5
  return np.asarray(jax.nn.log_softmax(jnp.float32(logits)), np.float64)


def _collapse(path):
  """A path's labelling: repeats merged, then blanks removed."""
  merged = [s for i, s in enumerate(path) if i == 0 or s != path[i - 1]]
  return tuple(s for s in merged if s != BLANK)


def _labelling_probs(log_probs, length):
  """{labelling: p(labelling)} by summing exp(log p(path)) over every path of `length` frames."""
  vocab, probs = log_probs.shape[-1], {}
  for path in itertools.product(range(vocab), repeat=length):
    p = np.exp(sum(log_probs[t, s] for t, s in enumerate(path)))
    probs[_collapse(path)] = probs.get(_collapse(path), 0.0) + p
  return probs


def _prefix_prob(probs, prefix):
  return sum(p for labels, p in probs.items() if labels[:len(prefix)] == tuple(prefix))


_extend = jax.jit(ctc.extend)


def test_prefix_and_full_probabilities_match_every_path_and_ignore_padding():
  """Rows of 5 and 4 frames (the second padded with a garbage frame), V = 4 with blank."""
  frames, vocab, lengths = 5, 4, np.array([5, 4])
  raw = _log_probs(0, 2, frames, vocab)
  log_probs = ctc.mask_padding(jnp.float32(raw), jnp.asarray(lengths))
  brute = [_labelling_probs(raw[b], lengths[b]) for b in range(2)]

  def check(prefix, r, psi):  # then every extension of prefix, up to length 3
    want_prefix = [_prefix_prob(brute[b], prefix) for b in range(2)]
    want_full = [brute[b].get(tuple(prefix), 0.0) for b in range(2)]
    np.testing.assert_allclose(np.exp(psi), want_prefix, rtol=1e-4, atol=1e-7,
                               err_msg=f"prefix {prefix}")
    np.testing.assert_allclose(np.exp(ctc.full_score(r)), want_full, rtol=1e-4, atol=1e-7,
                               err_msg=f"labelling {prefix}")
    if len(prefix) < 3:
      last = jnp.full((2,), prefix[-1] if prefix else BOS, jnp.int32)
      r_all, psi_all = _extend(log_probs, r, last)
      for token in range(1, vocab):  # every label: blank is none
        check(prefix + [token], r_all[:, :, token], psi_all[:, token])

  check([], ctc.sos_forward(log_probs), jnp.zeros(2))


def _np_best_path(log_probs, length, max_len):
  labels = list(_collapse(list(np.argmax(log_probs[:length], axis=-1))))[:max_len]
  labels += [EOS] if len(labels) < max_len else []
  return labels + [0] * (max_len - len(labels))


@pytest.mark.parametrize("max_len", [None, 3])
def test_greedy_is_the_best_path_collapsed(max_len):
  raw = _log_probs(1, 4, 9, 3)  # few tokens: repeats and blanks between them are common
  lengths = np.array([9, 6, 1, 0])
  got = jax.jit(lambda x, n: ctc.greedy(x, n, max_len=max_len))(jnp.float32(raw), lengths)
  width = max_len or 10
  assert got.shape == (4, width) and got.dtype == jnp.int32
  want = [_np_best_path(raw[b], lengths[b], width) for b in range(4)]
  np.testing.assert_array_equal(got, want)


# Joint search: vocabulary blank, BOS, EOS and the labels 3, 4, 5; 4 frames (3 in row 1).
FRAMES, VOCAB, LENGTHS = 4, 6, np.array([4, 3])
LABELS = (3, 4, 5)
WIDE = 128  # more than the real candidates of any step (27 * 3 + 27 at length 3): exact


def _att_model(seed):
  """An attention decoder stand-in: logits from the previous token and the running sum
  of the tokens fed (the state); blank and BOS made unlikely, as a trained decoder has them."""
  table = np.random.default_rng(seed).normal(size=(3, VOCAB, VOCAB)) * 2
  table[..., [BLANK, BOS]] -= 20.0
  table_j = jnp.float32(table)

  def step(state, tokens):
    return table_j[state["sum"] % 3, tokens], {"sum": state["sum"] + tokens}

  def log_prob(seq):  # log p_att of the tokens of seq (EOS included)
    total, prev, fed = 0.0, BOS, 0
    for token in seq:
      logits = table[fed % 3, prev]
      total += logits[token] - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
      fed, prev = fed + prev, token
    return total

  return step, log_prob


def _brute_ranking(raw, weight, att_log_prob):
  """Per row, every labelling over LABELS that CTC can emit, with its joint score, best first."""
  rankings = []
  for b in range(raw.shape[0]):
    probs = _labelling_probs(raw[b], LENGTHS[b])
    scored = []
    for labels, p in probs.items():
      if set(labels) <= set(LABELS):
        att = att_log_prob(list(labels) + [EOS]) if weight < 1 else 0.0
        scored.append((weight * np.log(p) + (1 - weight) * att, list(labels) + [EOS]))
    rankings.append(sorted(scored, reverse=True))
  return rankings


def _check_top(seqs, scores, rankings, top):
  for b, ranking in enumerate(rankings):
    for rank in range(top):
      want_score, want_seq = ranking[rank]
      assert [int(t) for t in seqs[b, rank][:len(want_seq)]] == want_seq, (b, rank)
      np.testing.assert_allclose(scores[b, rank], want_score, rtol=1e-4, err_msg=(b, rank))


def test_ctc_prefix_beam_search_finds_the_most_probable_labellings():
  raw = _log_probs(2, 2, FRAMES, VOCAB)
  seqs, scores = joint_beam_search(
      None, None, jnp.float32(raw), jnp.asarray(LENGTHS), 2, ctc_weight=1.0, beam_size=WIDE,
      bos_id=BOS, eos_id=EOS, max_len=FRAMES + 1)
  _check_top(seqs, scores, _brute_ranking(raw, 1.0, None), top=3)


def test_joint_scores_are_the_weighted_sum_of_ctc_and_attention_log_probs():
  raw = _log_probs(3, 2, FRAMES, VOCAB)
  step, att_log_prob = _att_model(4)
  state = {"sum": jnp.zeros((2,), jnp.int32)}
  seqs, scores = jax.jit(lambda s, x: joint_beam_search(
      step, s, x, jnp.asarray(LENGTHS), 2, ctc_weight=0.3, beam_size=WIDE, bos_id=BOS,
      eos_id=EOS, max_len=FRAMES + 1))(state, jnp.float32(raw))
  _check_top(seqs, scores, _brute_ranking(raw, 0.3, att_log_prob), top=3)


def test_ctc_weight_zero_is_the_attention_beam_search():
  raw = _log_probs(5, 2, FRAMES, VOCAB)
  step, _ = _att_model(6)
  state = {"sum": jnp.zeros((2,), jnp.int32)}
  kw = dict(beam_size=3, bos_id=BOS, eos_id=EOS, max_len=7, alpha=0.6)
  want = beam_search(step, state, 2, **kw)
  got = joint_beam_search(step, state, jnp.float32(raw), jnp.asarray(LENGTHS), 2,
                          ctc_weight=0.0, **kw)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_array_equal(got[1], want[1])


def test_joint_search_needs_a_decoder_below_weight_one():
  with pytest.raises(ValueError, match="needs ctc_weight=1"):
    joint_beam_search(None, None, jnp.zeros((1, 3, 5)), jnp.array([3]), 1, ctc_weight=0.5,
                      beam_size=2, bos_id=BOS, eos_id=EOS, max_len=4)
