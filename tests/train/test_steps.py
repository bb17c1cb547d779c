"""Loss against NumPy; the sharded jitted step learns; hard attention adds REINFORCE; the
parameters' moving average (`optim.ema_decay`) against its recurrence in NumPy."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from attention_jax import tasks
from attention_jax.models.registry import build_model
from attention_jax.tasks import seq2seq
from attention_jax.train import optim, partition, setup, steps

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


def test_the_average_follows_its_recurrence_and_leaves_the_updates_alone(numpy_ema):
  tx, _ = optim.make_optimizer(dict(OPTIM, name="sgd", momentum=0.0, ema_decay=0.5), 100)
  plain, _ = optim.make_optimizer(dict(OPTIM, name="sgd", momentum=0.0), 100)
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": np.zeros(2, np.float32)}
  state = steps.TrainState.create(apply_fn=None, params=params, tx=tx)
  twin = steps.TrainState.create(apply_fn=None, params=params, tx=plain)
  assert optim.eval_params(twin) is twin.params  # no average kept without ema_decay
  trajectory = [params]
  for _ in range(12):  # past t = 8, where (1 + t) / (10 + t) first exceeds the decay
    grads = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in params.items()}
    state, twin = state.apply_gradients(grads=grads), twin.apply_gradients(grads=grads)
    trajectory.append(jax.device_get(state.params))
  for k, v in jax.device_get(twin.params).items():  # training is unchanged by the average
    np.testing.assert_array_equal(trajectory[-1][k], v)
  want, got = numpy_ema(trajectory, 0.5), jax.device_get(optim.eval_params(state))
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got[k], trajectory[-1][k])
  with pytest.raises(ValueError, match="needs the parameters"):
    optim.params_ema(0.5).update(params, optim.params_ema(0.5).init(params))


def test_the_sharded_donating_step_keeps_the_average(numpy_ema):
  model = build_model(dict(name="rnn_seq2seq", vocab_size=12, attention="luong", score="dot",
                           hidden_dim=16, src_embed_dim=8, tgt_embed_dim=8))
  task = tasks.Seq2SeqTask(model, None)
  tx, schedule = optim.make_optimizer(dict(OPTIM, ema_decay=0.9), 100)
  mesh = partition.make_mesh((-1, 1))
  state, shardings = setup.create_state(task, tx, jax.random.key(0), 8, mesh)
  train, _ = setup.jit_steps(task, shardings, mesh, schedule=schedule)
  flat = lambda tree: dict(jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0])
  trajectory = [flat(state.params)]
  with partition.activate(mesh):
    sharded = partition.shard_batch(_batch(1), mesh)
    for _ in range(4):
      state, _ = train(state, sharded, jax.random.key(1))
      trajectory.append(flat(state.params))
  want, got = numpy_ema(trajectory, 0.9), flat(optim.eval_params(state))
  assert want.keys() == got.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
