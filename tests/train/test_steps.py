"""Loss against NumPy; the sharded jitted step learns; hard attention adds REINFORCE."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from attention_jax import tasks
from attention_jax.models.registry import build_model
from attention_jax.tasks import seq2seq
from attention_jax.train import optim, partition, setup

OPTIM = dict(name="adamw", learning_rate=1e-2, warmup_steps=0, schedule="constant", b1=0.9,
             b2=0.98, weight_decay=0.0, grad_clip_norm=1.0)


def _batch(seed=0, b=8, s=6, t=5, vocab=12):
  rng = np.random.default_rng(seed)
  targets = rng.integers(3, vocab, (b, t)).astype(np.int32)
  batch = {"inputs": rng.integers(3, vocab, (b, s)).astype(np.int32),
           "input_lengths": rng.integers(2, s + 1, (b,)).astype(np.int32),
           "targets": targets, "target_lengths": rng.integers(1, t + 1, (b,)).astype(np.int32),
           "weights": np.ones((b,), np.float32)}
  batch["decoder_inputs"] = np.concatenate([np.ones((b, 1), np.int32), targets[:, :-1]], 1)
  batch["weights"][-1] = 0.0  # a padding row
  return batch


def test_label_smoothed_cross_entropy_matches_numpy():
  rng = np.random.default_rng(0)
  logits, targets = rng.normal(size=(2, 3, 7)), rng.integers(0, 7, (2, 3))
  smoothed, nll = tasks.cross_entropy(np.float32(logits), targets, 0.1)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  q = np.full((2, 3, 7), 0.1 / 7)
  for idx in np.ndindex(2, 3):
    q[idx][targets[idx]] += 0.9
  np.testing.assert_allclose(smoothed, -(q * log_p).sum(-1), rtol=1e-5)
  want_nll = -np.take_along_axis(log_p, targets[..., None], -1)[..., 0]
  np.testing.assert_allclose(nll, want_nll, rtol=1e-5)
  # At 0 the smoothing term is skipped: both outputs are the plain NLL.
  for out in tasks.cross_entropy(np.float32(logits), targets, 0.0):
    np.testing.assert_allclose(out, want_nll, rtol=1e-5)


def test_token_mask_counts_real_tokens_of_real_rows():
  batch = _batch()
  want = (np.arange(5)[None] < batch["target_lengths"][:, None]) * batch["weights"][:, None]
  np.testing.assert_array_equal(tasks.token_mask(batch), want)


@pytest.mark.parametrize("attention", ["luong", "hard"])
def test_sharded_step_learns_a_fixed_batch(attention):
  model = build_model(dict(name="rnn_seq2seq", vocab_size=12, attention=attention, score="dot",
                           hidden_dim=16, src_embed_dim=8, tgt_embed_dim=8))
  batch = _batch(1)
  task = tasks.Seq2SeqTask(model, None)
  tx, schedule = optim.make_optimizer(OPTIM, 100)
  mesh = partition.make_mesh((-1, 1))
  state, shardings = setup.create_state(task, tx, jax.random.key(0), 8, mesh)
  train, evaluate = setup.jit_steps(task, shardings, mesh, schedule=schedule)
  with partition.activate(mesh):
    sharded = partition.shard_batch(batch, mesh)
    first = evaluate(state.params, sharded)
    for _ in range(30):
      state, metrics = train(state, sharded, jax.random.key(1))
    last = evaluate(state.params, sharded)
  assert int(state.step) == 30
  assert float(first["tokens"]) == np.sum(tasks.token_mask(batch))
  assert float(last["nll_sum"]) < 0.5 * float(first["nll_sum"])
  assert all(np.isfinite(float(v)) for v in metrics.values())


def test_bad_mesh_and_optimizer_are_named():
  with pytest.raises(ValueError, match=r"mesh_shape \(3, 1\) needs 3 devices"):
    partition.make_mesh((3, 1))
  with pytest.raises(ValueError, match="optim.schedule='linear' is unknown"):
    optim.make_optimizer(dict(OPTIM, schedule="linear"), 10)


def test_hard_attention_scores_learn_only_through_reinforce():
  """The sampled context has no gradient to the scores, so the score parameters' gradient
  is the REINFORCE surrogate's alone: nonzero here, zero with the surrogate switched off."""
  model = build_model(dict(name="rnn_seq2seq", vocab_size=12, attention="hard", score="general",
                           hidden_dim=16, src_embed_dim=8, tgt_embed_dim=8))
  batch = _batch(2)
  task = tasks.Seq2SeqTask(model, None)
  params = nn.meta.unbox(task.init(jax.random.key(0), batch)["params"])
  loss = lambda p: task.loss(p, batch, jax.random.key(3), train=True)
  grad = lambda: jax.grad(loss, has_aux=True)(params)[0]
  assert np.abs(grad()["align"]["w"]).max() > 0
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(seq2seq.hard, "reinforce_surrogate", lambda log_prob, reward, baseline: 0.0 * log_prob)
    assert np.abs(grad()["align"]["w"]).max() == 0
