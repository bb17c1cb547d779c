"""The REINFORCE surrogate's credit ('sequence' or 'step') against NumPy loops, and the
straight-through estimator in the RNN: no surrogate, and the cross-entropy alone trains the
scores."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.models.rnn_seq2seq import RNNSeq2Seq
from attention_jax.tasks.seq2seq import reinforce_loss

RNG = np.random.default_rng(0)
B, T = 4, 5
NLL = RNG.uniform(0.1, 3.0, (B, T))
MASK = (np.arange(T)[None] < np.array([5, 3, 4, 2])[:, None]).astype(np.float64)
ROWS = np.array([1.0, 1.0, 1.0, 0.0])  # the last row is padding
TOKENS = float((MASK * ROWS[:, None]).sum())


def _advantages(credit):
  """d loss / d log_prob[b, t] * -TOKENS, by loops: the advantage of each choice."""
  out = np.zeros((B, T))
  for b in range(B):
    for t in range(T):
      if not (MASK[b, t] and ROWS[b]):
        continue
      if credit == "sequence":
        reward = lambda r: -(NLL[r] * MASK[r]).sum()
        others = [r for r in range(B) if ROWS[r] and r != b]
      else:  # the tokens from t on; the baseline over the other rows still at step t
        reward = lambda r: -(NLL[r, t:] * MASK[r, t:]).sum()
        others = [r for r in range(B) if ROWS[r] and MASK[r, t] and r != b]
      out[b, t] = reward(b) - (np.mean([reward(r) for r in others]) if others else 0.0)
  return out


@pytest.mark.parametrize("credit", ["sequence", "step"])
def test_surrogate_gradient_is_each_choice_advantage(credit):
  grad = jax.grad(lambda lp: reinforce_loss(
      lp, jnp.float32(NLL), jnp.float32(MASK), jnp.float32(ROWS), jnp.float32(TOKENS),
      credit))(jnp.zeros((B, T), jnp.float32))
  np.testing.assert_allclose(-np.asarray(grad) * TOKENS, _advantages(credit), rtol=1e-5,
                             atol=1e-5)


def test_step_credit_leaves_out_the_tokens_before_the_choice():
  """Raising an early token's NLL changes the sequence credit of every later choice of
  that row, and the step credit of none of them."""
  worse = NLL.copy()
  worse[0, 0] += 5.0
  for credit, moved in (("sequence", True), ("step", False)):
    grads = [np.asarray(jax.grad(lambda lp, n=n: reinforce_loss(
        lp, jnp.float32(n), jnp.float32(MASK), jnp.float32(ROWS), jnp.float32(TOKENS),
        credit))(jnp.zeros((B, T), jnp.float32))) for n in (NLL, worse)]
    assert np.any(grads[0][0, 1:] != grads[1][0, 1:]) == moved, credit


def _hard_model(estimator):
  return RNNSeq2Seq(vocab_size=9, attention="hard", score="general", cell="gru", hidden_dim=8,
                    src_embed_dim=4, tgt_embed_dim=4, hard_estimator=estimator)


@pytest.mark.parametrize("estimator", ["reinforce", "gumbel"])
def test_only_the_straight_through_estimator_trains_the_scores_by_cross_entropy(estimator):
  model = _hard_model(estimator)
  x = jnp.asarray(RNG.integers(2, 9, (3, 6)), jnp.int32)
  lengths, y_in = jnp.int32([6, 4, 5]), jnp.asarray(RNG.integers(2, 9, (3, 4)), jnp.int32)
  params = nn.unbox(model.init(jax.random.key(0), x, lengths, y_in)["params"])

  def cross_entropy(p):
    logits, sown = model.apply({"params": p}, x, lengths, y_in, deterministic=False,
                               rngs={"sample": jax.random.key(1)}, mutable=["reinforce"])
    logp = jax.nn.log_softmax(logits)
    return -jnp.sum(jnp.take_along_axis(logp, y_in[..., None], -1)), sown

  grads, sown = jax.grad(cross_entropy, has_aux=True)(params)
  score_grad = np.abs(np.asarray(grads["align"]["w"])).max()
  if estimator == "gumbel":
    assert "reinforce" not in sown and score_grad > 0
  else:
    assert sown["reinforce"]["log_prob"][0].shape == (3, 4) and score_grad == 0


def test_unknown_estimator_and_credit_are_named():
  with pytest.raises(ValueError, match="RNNSeq2Seq.hard_estimator='st' is unknown; known: "
                     "reinforce, gumbel"):
    _hard_model("st")
  from attention_jax.tasks.seq2seq import Seq2SeqTask  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="task.reinforce_credit='token' is unknown; known: "
                     "sequence, step"):
    Seq2SeqTask(_hard_model("reinforce"), None, reinforce_credit="token")


def _batch():
  x = jnp.asarray(RNG.integers(2, 9, (3, 6)), jnp.int32)
  y = jnp.asarray(RNG.integers(2, 9, (3, 4)), jnp.int32)
  return {"inputs": x, "input_lengths": jnp.int32([6, 4, 5]), "targets": y,
          "decoder_inputs": jnp.concatenate([jnp.ones((3, 1), jnp.int32), y[:, :-1]], 1),
          "target_lengths": jnp.int32([4, 2, 3]), "weights": jnp.float32([1, 1, 0])}


def test_expected_context_minibatch_has_no_reinforce_term_and_trains_the_scores():
  """Xu et al.'s recipe with p = 1: the context is sum_j alpha_j v_j, recomputed here from
  the sown weights, so the scores get a cross-entropy gradient and the log-probs are 0."""
  model = RNNSeq2Seq(vocab_size=9, attention="hard", score="general", cell="gru", hidden_dim=8,
                     src_embed_dim=4, tgt_embed_dim=4, expected_context_prob=1.0)
  soft = RNNSeq2Seq(vocab_size=9, attention="luong", score="general", cell="gru", hidden_dim=8,
                    src_embed_dim=4, tgt_embed_dim=4)
  b = _batch()
  args = (b["inputs"], b["input_lengths"], b["decoder_inputs"])
  params = nn.unbox(model.init(jax.random.key(0), *args)["params"])
  logits, sown = model.apply({"params": params}, *args, deterministic=False,
                             rngs={"sample": jax.random.key(1)}, mutable=["reinforce"])
  np.testing.assert_array_equal(sown["reinforce"]["log_prob"][0], 0.0)
  # Same parameters, soft attention: Luong's decoder with the expected context.
  np.testing.assert_allclose(logits, soft.apply({"params": params}, *args), rtol=1e-5,
                             atol=1e-6)


@pytest.mark.parametrize("credit", ["sequence", "step"])
def test_entropy_bonus_subtracts_the_mean_attention_entropy(credit):
  from attention_jax.tasks.seq2seq import Seq2SeqTask  # pylint: disable=g-import-not-at-top
  model, b, rng = _hard_model("reinforce"), _batch(), jax.random.key(3)
  params = nn.unbox(model.init(jax.random.key(0), b["inputs"], b["input_lengths"],
                               b["decoder_inputs"])["params"])
  plain, bonus = (Seq2SeqTask(model, None, reinforce_credit=credit, entropy_bonus=lam)
                  for lam in (0.0, 0.5))
  loss = lambda task: float(task.loss(params, b, rng, train=True)[0])
  _, sown = bonus.apply(params, b, rngs={"dropout": jax.random.fold_in(rng, 0),
                                         "sample": jax.random.fold_in(rng, 1)},
                        train=True, mutable=("intermediates",))
  w = np.asarray(sown["intermediates"]["attention_weights"][0], np.float64)  # [B, T, S]
  real = (np.arange(4)[None] < np.asarray(b["target_lengths"])[:, None]) * np.asarray(
      b["weights"])[:, None]
  ent = -np.sum(np.where(w > 0, w * np.log(np.where(w > 0, w, 1)), 0), -1)
  np.testing.assert_allclose(loss(plain) - loss(bonus), 0.5 * (ent * real).sum() / real.sum(),
                             rtol=1e-4)
  with pytest.raises(ValueError, match="task.entropy_bonus is for model.attention='hard'"):
    Seq2SeqTask(RNNSeq2Seq(vocab_size=9), None, entropy_bonus=0.1)
