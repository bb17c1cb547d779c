"""Greedy, sampling and beam search against brute force and hand-built models."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.decode import beam_search, greedy, sample
from attention_jax.models.rnn_seq2seq import RNNSeq2Seq
from attention_jax.models.transformer import EncoderDecoderTransformer

BOS, EOS, V = 1, 2, 5


def _stateful_model(seed):
  """Logits depend on the previous token and on the running token sum mod 3 (the state)."""
  table = jnp.asarray(np.random.default_rng(seed).normal(size=(3, V, V)) * 2, jnp.float32)

  def step(state, tokens):
    logits = table[state["sum"] % 3, tokens]
    return logits, {"sum": state["sum"] + tokens}

  return table, step


def _np_logprob(table, seq):
  """log p of a token sequence (stopping after EOS), by replaying the model in NumPy."""
  table = np.asarray(table, np.float64)
  total, prev, fed = 0.0, BOS, 0  # fed: sum of the tokens fed to the model so far
  for tok in seq:
    logits = table[fed % 3, prev]
    total += logits[tok] - np.log(np.exp(logits).sum())
    fed, prev = fed + prev, tok
    if tok == EOS:
      break
  return total


def _init(batch):
  return {"sum": jnp.zeros((batch,), jnp.int32)}


def test_greedy_matches_a_numpy_loop_and_pads_after_eos():
  table, step = _stateful_model(0)
  out = jax.jit(lambda s: greedy(step, s, 3, bos_id=BOS, eos_id=EOS, max_len=8))(_init(3))
  prev, fed, want = BOS, 0, []
  for _ in range(8):
    tok = int(np.argmax(np.asarray(table)[fed % 3, prev]))
    want.append(tok)
    fed, prev = fed + prev, tok
    if tok == EOS:
      break
  want += [0] * (8 - len(want))
  np.testing.assert_array_equal(out, np.tile(want, (3, 1)))


def test_sampling_follows_the_distribution_and_top_k():
  table, step = _stateful_model(1)
  n = 6000
  draw = jax.jit(lambda rng: sample(step, _init(n), n, rng, bos_id=BOS, eos_id=EOS,
                                    max_len=1, temperature=0.7))
  first = np.asarray(draw(jax.random.key(0))[:, 0])
  logits = np.asarray(table)[0, BOS] / 0.7
  probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
  counts = np.bincount(first, minlength=V)
  np.testing.assert_array_less(np.abs(counts - n * probs), 4 * np.sqrt(n * probs * (1 - probs)) + 1)
  top2 = np.argsort(np.asarray(table)[0, BOS])[-2:]
  kept = sample(step, _init(500), 500, jax.random.key(1), bos_id=BOS, eos_id=EOS, max_len=1,
                top_k=2)
  assert set(np.unique(kept[:, 0])) <= set(top2.tolist())
  np.testing.assert_array_equal(
      sample(step, _init(4), 4, jax.random.key(2), bos_id=BOS, eos_id=EOS, max_len=6, top_k=1),
      greedy(step, _init(4), 4, bos_id=BOS, eos_id=EOS, max_len=6))
  with pytest.raises(ValueError, match="temperature must be > 0"):
    sample(step, _init(1), 1, jax.random.key(0), bos_id=BOS, eos_id=EOS, max_len=2,
           temperature=0.0)


@pytest.mark.parametrize("seed", range(4))
def test_beam_of_one_is_greedy(seed):
  _, step = _stateful_model(seed)
  g = greedy(step, _init(2), 2, bos_id=BOS, eos_id=EOS, max_len=7)
  seqs, _ = beam_search(step, _init(2), 2, beam_size=1, bos_id=BOS, eos_id=EOS, max_len=7,
                        alpha=0.0)
  np.testing.assert_array_equal(seqs[:, 0], g)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_wide_beam_finds_the_brute_force_best_and_scores_are_exact(alpha):
  """A beam wider than all V^max_len continuations keeps every hypothesis, so it is exact.

  The final hypotheses are those ending in EOS and those cut at max_len.
  """
  table, step = _stateful_model(7)
  max_len = 3
  words = [t for t in range(V) if t != EOS]
  finished = [list(body) + [EOS] for n in range(max_len)
              for body in itertools.product(words, repeat=n)]
  cut = [list(seq) for seq in itertools.product(words, repeat=max_len)]
  score = lambda seq: _np_logprob(table, seq) / ((5 + len(seq)) / 6) ** alpha
  ranked = sorted(finished + cut, key=score, reverse=True)
  seqs, scores = beam_search(step, _init(1), 1, beam_size=V ** max_len, bos_id=BOS, eos_id=EOS,
                             max_len=max_len, alpha=alpha)
  for rank in range(5):  # the five best, in order, with their exact scores
    best = ranked[rank]
    assert [int(t) for t in seqs[0, rank][: len(best)]] == best
    np.testing.assert_allclose(scores[0, rank], score(best), rtol=1e-5)


def test_beam_beats_greedy_on_a_hand_built_model():
  """Greedy takes A (0.6) and then finds nothing likely; B (0.4) then EOS (0.9) is best."""
  a, b, c = 3, 4, 0
  probs = np.full((V, V), 1e-6)
  probs[BOS, a], probs[BOS, b] = 0.6, 0.4
  probs[a, [EOS, c, b]] = 0.3, 0.35, 0.35
  probs[b, EOS], probs[b, c] = 0.9, 0.1
  probs[c, EOS] = 1.0
  logits = jnp.asarray(np.log(probs / probs.sum(1, keepdims=True)), jnp.float32)
  step = lambda state, tokens: (logits[tokens], state)
  state = {"unused": jnp.zeros((1,))}
  np.testing.assert_array_equal(greedy(step, state, 1, bos_id=BOS, eos_id=EOS, max_len=3)[0],
                                [a, c, EOS])  # p = 0.6 * 0.35 * 1.0 = 0.21
  seqs, scores = beam_search(step, state, 1, beam_size=2, bos_id=BOS, eos_id=EOS, max_len=3,
                             alpha=0.0)
  np.testing.assert_array_equal(seqs[0, 0], [b, EOS, 0])  # p = 0.36
  np.testing.assert_allclose(scores[0, 0], np.log(0.36), rtol=1e-4)


MODELS = {
    "transformer": lambda: EncoderDecoderTransformer(
        vocab_size=9, d_model=16, num_heads=2, d_ff=32, num_layers=2, max_len=12,
        dropout_rate=0.0),
    # Beams share cache rows (KVCache.owner) through scanned layers and grouped-query heads.
    "transformer scanned gqa": lambda: EncoderDecoderTransformer(
        vocab_size=9, d_model=16, num_heads=4, num_kv_heads=2, d_ff=32, num_layers=2,
        max_len=12, dropout_rate=0.0, scan_layers=True),
    "rnn bahdanau": lambda: RNNSeq2Seq(vocab_size=9, attention="bahdanau", score="additive",
                                       cell="gru", hidden_dim=16, src_embed_dim=8,
                                       tgt_embed_dim=8),
    "rnn luong bidirectional": lambda: RNNSeq2Seq(vocab_size=9, attention="luong", score="dot",
                                                  bidirectional=True, hidden_dim=16,
                                                  src_embed_dim=8, tgt_embed_dim=8),
    # The previous alignment in the state must follow its beam.
    "rnn location_aware": lambda: RNNSeq2Seq(vocab_size=9, attention="luong",
                                             score="location_aware", cell="gru", hidden_dim=16,
                                             src_embed_dim=8, tgt_embed_dim=8, conv_filters=4,
                                             conv_width=3),
}


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_greedy_and_beam_on_models_are_consistent_with_teacher_forcing(kind):
  """Feeding greedy's own output back as targets, the full forward's argmax reproduces it;
  beam search of width 1 gives the same sequences, and a wider beam's scores equal the
  teacher-forced log-probabilities of its sequences (so the state follows its beams)."""
  model = MODELS[kind]()
  inputs = jnp.array([[3, 4, 5, 6], [7, 8, 0, 0]])
  lengths = jnp.array([4, 2])
  # Each model call is jitted: eagerly, every op would be compiled on its own.
  variables = jax.jit(model.init)(jax.random.key(0), inputs, lengths, inputs)
  state = jax.jit(lambda v: model.apply(v, model.apply(v, inputs, lengths, method=model.encode),
                                        lengths, method=model.init_decode_state))(variables)
  step = lambda s, t: model.apply(variables, s, t, method=model.decode_step)
  forward = jax.jit(lambda targets: model.apply(variables, inputs, lengths, targets))
  out = jax.jit(lambda s: greedy(step, s, 2, bos_id=BOS, eos_id=EOS, max_len=10))(state)
  targets_in = jnp.concatenate([jnp.full((2, 1), BOS), out[:, :-1]], axis=1)
  argmax = jnp.argmax(forward(targets_in), axis=-1)
  length = lambda seq: int(np.argmax(seq == EOS)) + 1 if (seq == EOS).any() else len(seq)
  for b in range(2):
    n = length(np.asarray(out[b]))
    np.testing.assert_array_equal(argmax[b, :n], out[b, :n])
  beam1, _ = jax.jit(lambda s: beam_search(step, s, 2, beam_size=1, bos_id=BOS, eos_id=EOS,
                                           max_len=10, alpha=0.0))(state)
  np.testing.assert_array_equal(beam1[:, 0], out)
  seqs, scores = jax.jit(lambda s: beam_search(step, s, 2, beam_size=3, bos_id=BOS, eos_id=EOS,
                                               max_len=6, alpha=0.6))(state)
  for beam in range(3):
    targets_in = jnp.concatenate([jnp.full((2, 1), BOS), seqs[:, beam, :-1]], axis=1)
    logp = jax.nn.log_softmax(forward(targets_in))
    for b in range(2):
      seq = np.asarray(seqs[b, beam])
      n = length(seq)
      total = sum(float(logp[b, t, seq[t]]) for t in range(n))
      np.testing.assert_allclose(scores[b, beam], total / ((5 + n) / 6) ** 0.6, rtol=1e-4)
