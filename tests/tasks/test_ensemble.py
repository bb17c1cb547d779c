"""The ensemble task: the members' pooled distribution (mean probability, normalised geometric
mean) against NumPy, its decoders against its own teacher-forced distribution, members of
two architectures, and an ensemble of one against its member."""
import functools

import jax
import numpy as np
import pytest

from attention_jax import tasks
from attention_jax.data.vocab import BOS_ID, EOS_ID
from attention_jax.models.registry import build_model
from attention_jax.tasks.ensemble import COMBINES, EnsembleTask

VOCAB, SRC_VOCAB, MAX_LEN = 11, 9, 7
MODELS = {
    "rnn": dict(name="rnn_seq2seq", hidden_dim=16, src_embed_dim=8, tgt_embed_dim=8,
                attention="luong", score="general", bidirectional=True),
    "transformer": dict(name="transformer", d_model=16, num_heads=2, d_ff=32, num_layers=1,
                        dropout_rate=0.0, max_len=16),
}


@functools.lru_cache(maxsize=None)
def _members(kind: str):
  """(member task, 3 members' params, a batch, jitted member apply, jitted ensemble apply),
  built once per model kind; an ensemble of n takes the first n members."""
  model = build_model(dict(MODELS[kind], vocab_size=VOCAB, src_vocab_size=SRC_VOCAB))
  task = tasks.Seq2SeqTask(model, None)
  batch = _batch()
  # Logits far from uniform, so that the members disagree and the mean matters.
  init = jax.jit(lambda key: jax.tree.map(lambda a: a * 3.0, task.init(key, batch)["params"]))
  params = tuple(init(jax.random.key(i)) for i in range(3))
  return task, params, batch, jax.jit(task.apply), jax.jit(EnsembleTask(task).apply)


def _batch():
  rng = np.random.default_rng(0)
  lengths = np.array([5, 3, 4], np.int32)
  inputs = rng.integers(4, SRC_VOCAB, size=(3, 5)).astype(np.int32)
  inputs[np.arange(5)[None, :] >= lengths[:, None]] = 0
  targets = rng.integers(4, VOCAB, size=(3, 4)).astype(np.int32)
  decoder_inputs = np.concatenate([np.full((3, 1), BOS_ID, np.int32), targets[:, :-1]], 1)
  return {"inputs": inputs, "input_lengths": lengths, "decoder_inputs": decoder_inputs,
          "targets": targets, "target_lengths": np.array([4, 2, 3], np.int32),
          "weights": np.ones(3, np.float32), "index": np.arange(3, dtype=np.int32)}


def _np_log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1, keepdims=True)) - x.max(
      -1, keepdims=True)


@pytest.mark.parametrize("kind", list(MODELS))
def test_apply_is_the_log_of_the_members_mean_probability(kind):
  _, params, batch, member_apply, ensemble_apply = _members(kind)
  got = ensemble_apply(params, batch)
  probs = [np.exp(_np_log_softmax(member_apply(p, batch))) for p in params]
  np.testing.assert_allclose(got, np.log(np.mean(probs, axis=0)), rtol=1e-5, atol=1e-5)
  # The members disagree: the mean is not any one of them.
  assert min(np.abs(np.exp(got) - p).max() for p in probs) > 1e-2


def _check_greedy(ensemble, params, batch):
  """Decoding steps N members' states side by side; feeding the decoded tokens back through
  the full teacher-forced pass must find each one the argmax where it was chosen."""
  ids = np.asarray(ensemble.predict(params, batch, method="greedy", max_len=MAX_LEN))
  forced = dict(batch, decoder_inputs=np.concatenate(
      [np.full((3, 1), BOS_ID, np.int32), ids[:, :-1]], 1))
  log_p = np.asarray(jax.jit(ensemble.apply)(params, forced))
  for row in range(3):
    stop = list(ids[row]).index(EOS_ID) + 1 if EOS_ID in ids[row] else MAX_LEN
    np.testing.assert_array_equal(ids[row, :stop], log_p[row, :stop].argmax(-1))
  one = np.asarray(ensemble.predict(params, batch, method="beam", beam_size=1,
                                    max_len=MAX_LEN))
  np.testing.assert_array_equal(one, ids)  # a beam of one is greedy


@pytest.mark.parametrize("kind", list(MODELS))
def test_greedy_takes_the_argmax_of_its_teacher_forced_distribution(kind):
  task, params, batch, _, _ = _members(kind)
  _check_greedy(EnsembleTask(task), params[:2], batch)


def test_log_probs_pools_the_normalised_geometric_mean():
  task, params, batch, member_apply, ensemble_apply = _members("rnn")
  ensemble = EnsembleTask(task, "log_probs")
  got = np.asarray(jax.jit(ensemble.apply)(params, batch))
  want = _np_log_softmax(np.mean([_np_log_softmax(member_apply(p, batch)) for p in params], 0))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert np.abs(got - ensemble_apply(params, batch)).max() > 1e-2  # not the mean probability
  _check_greedy(ensemble, params, batch)
  with pytest.raises(ValueError, match="combine='max' is unknown; known: probs, log_probs"):
    EnsembleTask(task, "max")


@pytest.mark.parametrize("combine", COMBINES)
def test_members_of_two_architectures(combine):
  """An RNN and a Transformer: each member decodes with its own model."""
  rnn, rnn_params, batch, rnn_apply, _ = _members("rnn")
  transformer, tf_params, _, tf_apply, _ = _members("transformer")
  ensemble = EnsembleTask([rnn, transformer], combine)
  params = (rnn_params[0], tf_params[0])
  logs = [_np_log_softmax(rnn_apply(params[0], batch)), _np_log_softmax(tf_apply(params[1], batch))]
  want = (_np_log_softmax(np.mean(logs, 0)) if combine == "log_probs"
          else np.log(np.mean(np.exp(logs), 0)))
  np.testing.assert_allclose(jax.jit(ensemble.apply)(params, batch), want, rtol=1e-5, atol=1e-5)
  _check_greedy(ensemble, params, batch)
  assert ensemble.decode_limit() == 16  # the Transformer's table; the RNN has no limit
  with pytest.raises(ValueError, match="3 parameter sets for an ensemble of 2 members"):
    ensemble.apply(rnn_params, batch)


@pytest.mark.parametrize("kind", list(MODELS))
def test_an_ensemble_of_one_is_its_member(kind):
  task, (params, *_), batch, _, _ = _members(kind)
  ensemble = EnsembleTask(task)
  want = task.predict(params, batch, method="beam", beam_size=3, max_len=MAX_LEN)
  got = ensemble.predict((params,), batch, method="beam", beam_size=3, max_len=MAX_LEN)
  np.testing.assert_array_equal(got, want)
  want = jax.jit(lambda p, b: task.loss(p, b, None, train=False)[1])(params, batch)
  got = jax.jit(lambda p, b: ensemble.loss(p, b, None, train=False)[1])((params,), batch)
  for key in want:
    np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=key)


def test_only_text_to_text_tasks_and_no_training():
  task, params, batch, _, _ = _members("rnn")
  with pytest.raises(ValueError, match="evaluated, not trained"):
    EnsembleTask(task).apply(params, batch, train=True)
  lm = tasks.LMTask(build_model(dict(name="lm", vocab_size=VOCAB, d_model=16, num_heads=2,
                                     d_ff=32, num_layers=1, max_len=16)), None, seq_len=8)
  with pytest.raises(ValueError, match="for task 'seq2seq' .*not 'lm'"):
    EnsembleTask(lm)
