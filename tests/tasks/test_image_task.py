"""The image2seq task: Xu et al.'s doubly stochastic term and entropy against NumPy, the
loss as the sum of its parts, the sentinel's beta split by token kind, bad configs."""
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.data.vocab import BOS_ID, EOS_ID, SymbolVocabulary
from attention_jax.models.registry import build_model
from attention_jax.tasks import image

H = 8
VOCAB = SymbolVocabulary.build(["a 3 top left , a 7 in the middle"], "symbols")


def _dataset():
  return types.SimpleNamespace(target_vocab=VOCAB, name="digit_scenes/test", feature_dim=H,
                               spec=types.SimpleNamespace(input_kind="image"))


def _task(doubly_stochastic=0.0, entropy_bonus=0.0, **changes):
  fields = dict(name="image_rnn", vocab_size=VOCAB.size, image_height=H, channels=(3,),
                hidden_dim=8, tgt_embed_dim=4, attention_dim=5, attention="bahdanau",
                score="additive", context_gate=True)
  return image.ImageTask(build_model(dict(fields, **changes)), _dataset(),
                         doubly_stochastic=doubly_stochastic, entropy_bonus=entropy_bonus)


def _batch(seed=0, widths=(11, 6, 0), texts=("a 3 top left", "a 7 ,", "")):
  rng = np.random.default_rng(seed)
  b, t = len(widths), 6
  batch = {"inputs": np.zeros((b, 12, H), np.float32), "input_lengths": np.array(widths, np.int32),
           "targets": np.zeros((b, t), np.int32), "decoder_inputs": np.zeros((b, t), np.int32),
           "target_lengths": np.zeros((b,), np.int32), "weights": np.zeros((b,), np.float32),
           "index": np.full((b,), -1, np.int32)}
  for i, (w, text) in enumerate(zip(widths, texts)):
    batch["inputs"][i, :w] = rng.random((w, H))
    if text:
      ids = VOCAB.encode(text) + [EOS_ID]
      batch["targets"][i, :len(ids)] = ids
      batch["decoder_inputs"][i, :len(ids)] = [BOS_ID] + ids[:-1]
      batch["target_lengths"][i], batch["weights"][i], batch["index"][i] = len(ids), 1.0, i
  return batch


def _init(task, seed, batch):
  return jax.jit(task.init)(jax.random.key(seed), batch)["params"]


def _eval(task, params, batch):
  """`task.loss(..., train=False)`, compiled (op by op it takes seconds)."""
  return jax.jit(lambda p, b: task.loss(p, b, None, train=False))(params, batch)


def _sown(task, params, batch):
  return jax.jit(lambda p, b: task.apply(p, b, mutable=("intermediates",))[1])(params, batch)


def test_doubly_stochastic_and_entropy_match_numpy():
  rng = np.random.default_rng(0)
  weights = rng.dirichlet(np.ones(5), size=(2, 3))  # [B=2, T=3, S=5]
  weights[1, :, 3:] = 0.0  # row 1 has 3 real positions
  weights[1] /= weights[1].sum(-1, keepdims=True)
  steps = np.array([[1, 1, 1], [1, 1, 0]], np.float32)
  grid = np.array([[True] * 5, [True] * 3 + [False] * 2])
  expected = [sum((1 - sum(weights[b, t, i] * steps[b, t] for t in range(3))) ** 2
                  for i in range(5) if grid[b, i]) for b in range(2)]
  np.testing.assert_allclose(image.doubly_stochastic(jnp.asarray(weights), jnp.asarray(steps),
                                                     jnp.asarray(grid)), expected, rtol=1e-5)
  ent = [[-sum(p * np.log(p) for p in weights[b, t] if p > 0) for t in range(3)]
         for b in range(2)]
  np.testing.assert_allclose(image.entropy(jnp.asarray(weights)), ent, rtol=1e-5)
  np.testing.assert_allclose(image.entropy(jnp.eye(4)[None]), np.zeros((1, 4)), atol=0)


def test_loss_adds_lambda_times_the_term_per_target_token():
  """loss(lambda) - loss(0) == lambda * sum over images of the term / target tokens, the
  term recomputed from the sown weights with NumPy."""
  plain, regular = _task(), _task(doubly_stochastic=0.7)
  batch = _batch()
  params = _init(plain, 0, batch)
  loss0, sums0 = _eval(plain, params, batch)
  loss1, sums1 = _eval(regular, params, batch)
  inter = _sown(plain, params, batch)
  weights = np.asarray(inter["intermediates"]["attention_weights"][0])
  real_steps = np.arange(6)[None] < batch["target_lengths"][:, None]
  real_grid = np.arange(weights.shape[-1])[None] < (-(-batch["input_lengths"] // 2) * 4)[:, None]
  term = [((1 - (weights[b] * real_steps[b][:, None]).sum(0)) ** 2 * real_grid[b]).sum()
          for b in range(2)]  # the padding row (b = 2) weighs nothing
  tokens = batch["target_lengths"].sum()
  np.testing.assert_allclose(loss1 - loss0, 0.7 * sum(term) / tokens, rtol=1e-5)
  np.testing.assert_allclose(sums1["doubly_stochastic_sum"], sum(term), rtol=1e-5)
  metrics = regular.finish(jax.tree_util.tree_map(float, sums1))
  np.testing.assert_allclose(metrics["doubly_stochastic"], sum(term) / 2, rtol=1e-5)


def test_hard_attention_loss_subtracts_the_entropy_bonus():
  """Evaluation (no REINFORCE, argmax): loss(bonus) = loss(0) - bonus * mean entropy per token."""
  plain = _task(attention="hard", context_gate=False)
  bonus = _task(entropy_bonus=0.5, attention="hard", context_gate=False)
  batch = _batch(1)
  params = _init(plain, 1, batch)
  loss0, sums = _eval(plain, params, batch)
  loss1, _ = _eval(bonus, params, batch)
  np.testing.assert_allclose(loss0 - loss1, 0.5 * sums["entropy_sum"] / sums["tokens"],
                             rtol=1e-5)
  assert sums["entropy_sum"] > 0


def test_sentinel_betas_are_split_into_digit_and_other_tokens():
  task = _task(attention="luong", context_gate=False, sentinel=True)
  batch = _batch(2)
  params = _init(task, 2, batch)
  _, sums = _eval(task, params, batch)
  inter = _sown(task, params, batch)
  beta = np.asarray(inter["intermediates"]["sentinel_beta"][0])
  targets, real = batch["targets"], np.arange(6)[None] < batch["target_lengths"][:, None]
  digit = real & np.isin(targets, [VOCAB.encode("3")[0], VOCAB.encode("7")[0]])
  word = real & ~digit & (targets != EOS_ID)
  assert digit.sum() == 2 and word.sum() == 5
  metrics = task.finish(jax.tree_util.tree_map(float, sums))
  np.testing.assert_allclose(metrics["sentinel_beta_digits"], beta[digit].mean(), rtol=1e-5)
  np.testing.assert_allclose(metrics["sentinel_beta_words"], beta[word].mean(), rtol=1e-5)
  assert {"sentinel_beta_digits", "sentinel_beta_words", "doubly_stochastic"} <= set(
      task.metric_names("bleu"))


@pytest.mark.parametrize("task_kw,model_kw,message", [
    (dict(doubly_stochastic=1.0), dict(attention="none", context_gate=False),
     "task.doubly_stochastic regularises an attention RNN"),
    (dict(entropy_bonus=0.1), {}, "task.entropy_bonus is for model.attention='hard'"),
])
def test_regularisers_without_their_model_are_named(task_kw, model_kw, message):
  with pytest.raises(ValueError, match=message):
    _task(**task_kw, **model_kw)


def test_images_of_another_height_or_text_data_are_named():
  task = _task()
  task.dataset = _dataset()
  task.dataset.feature_dim = 16
  with pytest.raises(ValueError, match="model.image_height=8 pixels; .* has images 16 pixels"):
    task.check_data()
  task.dataset.spec = types.SimpleNamespace(input_kind="text")
  with pytest.raises(ValueError, match="has text inputs"):
    task.check_data()
