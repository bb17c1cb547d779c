"""The speech model and task: padding never changes a real frame, the joint loss is the
weighted sum of its parts, CTC's loss against brute-force enumeration of alignments,
SpecAugment's masks, and decode == teacher forcing through the front end."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax import decode
from attention_jax.data.vocab import BOS_ID, EOS_ID
from attention_jax.models.registry import build_model
from attention_jax.models.speech import subsampled_lengths
from attention_jax.tasks import speech
from attention_jax.tasks.seq2seq import Seq2SeqTask

V, MEL = 9, 12


def _model(**changes):
  fields = dict(name="speech", vocab_size=V, feature_dim=MEL, hidden_dim=16, attention_dim=8,
                tgt_embed_dim=8, frontend_channels=4, attention="bahdanau", score="additive",
                bidirectional=True)
  return build_model(dict(fields, **changes))


def _task(ctc_weight=0.3, **changes):
  return speech.SpeechTask(_model(**changes), None, ctc_weight=ctc_weight)


def _batch(seed=0, frames=(21, 13, 0), targets=(4, 2, 0), pad_frames=24, pad_targets=5):
  rng = np.random.default_rng(seed)
  b = len(frames)
  inputs = np.zeros((b, pad_frames, MEL), np.float32)
  tgt = np.zeros((b, pad_targets), np.int32)
  dec = np.zeros((b, pad_targets), np.int32)
  for i, (f, t) in enumerate(zip(frames, targets)):
    inputs[i, :f] = rng.normal(size=(f, MEL))
    if t:
      ids = rng.integers(4, V, t - 1).tolist() + [EOS_ID]
      tgt[i, :t] = ids
      dec[i, :t] = [BOS_ID] + ids[:-1]
  return {"inputs": inputs, "input_lengths": np.array(frames, np.int32), "targets": tgt,
          "decoder_inputs": dec, "target_lengths": np.array(targets, np.int32),
          "weights": (np.array(targets) > 0).astype(np.float32),
          "index": np.where(np.array(targets) > 0, np.arange(b), -1).astype(np.int32)}


def _pad(batch, frames):
  out = dict(batch)
  out["inputs"] = np.pad(batch["inputs"], ((0, 0), (0, frames), (0, 0)))
  return out


@pytest.mark.parametrize("encoder", ["lstm", "transformer"])
def test_padding_frames_change_nothing_real(encoder):
  task = _task(encoder_type=encoder, bidirectional=encoder == "lstm", num_heads=2, d_ff=16)
  batch = _batch()
  params = task.init(jax.random.key(0), batch)["params"]
  short = task.apply(params, batch)
  long = task.apply(params, _pad(batch, 17))
  frames = np.asarray(short["frames"])
  np.testing.assert_array_equal(frames, subsampled_lengths(batch["input_lengths"]))
  np.testing.assert_array_equal(frames, [6, 4, 0])  # ceil(ceil(n / 2) / 2)
  assert short["ctc"].shape[1] == 6 and long["ctc"].shape[1] == 11
  for i, f in enumerate(frames):
    np.testing.assert_allclose(long["ctc"][i, :f], short["ctc"][i, :f], rtol=1e-5, atol=1e-5)
  real = batch["weights"] > 0
  np.testing.assert_allclose(long["attention"][real], short["attention"][real], rtol=1e-5,
                             atol=1e-5)


def _ctc_brute_force(log_probs, labels):
  """-log sum over every frame labelling that collapses (repeats merged, blanks 0 removed)
  to `labels`."""
  t, v = log_probs.shape
  total = -math.inf
  for path in itertools.product(range(v), repeat=t):
    collapsed = [s for j, s in enumerate(path) if s != 0 and (j == 0 or path[j - 1] != s)]
    if collapsed == list(labels):
      total = np.logaddexp(total, sum(log_probs[j, s] for j, s in enumerate(path)))
  return -total


def test_ctc_losses_leave_out_eos_and_padding_against_brute_force():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(3, 5, 4)).astype(np.float32)
  batch = {"targets": np.array([[2, 3, EOS_ID], [3, 3, EOS_ID], [EOS_ID, 0, 0]], np.int32),
           "target_lengths": np.array([3, 3, 1], np.int32),
           "weights": np.array([1, 1, 0], np.float32)}
  frames = np.array([5, 4, 0], np.int32)
  got = np.asarray(speech.ctc_losses(jnp.asarray(logits), jnp.asarray(frames), batch))
  log_p = np.asarray(jax.nn.log_softmax(logits.astype(np.float64)))
  np.testing.assert_allclose(got[0], _ctc_brute_force(log_p[0], [2, 3]), rtol=1e-5)
  np.testing.assert_allclose(got[1], _ctc_brute_force(log_p[1, :4], [3, 3]), rtol=1e-5)
  assert got[2] == 0.0  # a padding row
  grads = jax.grad(lambda l: jnp.sum(speech.ctc_losses(l, jnp.asarray(frames), batch)))(
      jnp.asarray(logits))
  assert np.all(np.isfinite(grads)) and not np.any(grads[2]) and not np.any(grads[1, 4])


def test_joint_loss_is_the_weighted_sum_of_ctc_and_attention():
  batch = _batch(1)
  params = _task().init(jax.random.key(1), batch)["params"]
  att, _ = _task(0.0).loss(params, batch, None, train=True)
  ctc_only, metrics = _task(1.0).loss(params, batch, None, train=True)
  assert "nll" not in metrics  # CTC alone does not run the decoder
  joint, _ = _task(0.3).loss(params, batch, None, train=True)
  np.testing.assert_allclose(joint, 0.3 * ctc_only + 0.7 * att, rtol=1e-5)
  tokens = batch["target_lengths"].sum()
  ctc_sum = np.sum(speech.ctc_losses(
      _task().apply(params, batch)["ctc"], subsampled_lengths(batch["input_lengths"]), batch))
  np.testing.assert_allclose(ctc_only, ctc_sum / tokens, rtol=1e-5)
  loss, sums = _task(0.3).loss(params, batch, None, train=False)
  metrics = _task(0.3).finish({k: float(v) for k, v in sums.items()})
  np.testing.assert_allclose(metrics["loss"], joint, rtol=1e-5)
  np.testing.assert_allclose(metrics["ctc_loss"], ctc_only, rtol=1e-5)


def test_spec_augment_zeroes_bands_and_spans_inside_each_utterance():
  config = speech.SpecAugment(freq_masks=2, freq_width=3, time_masks=2, time_width=4)
  features = jnp.asarray(np.random.default_rng(0).normal(size=(64, 30, MEL)) + 5.0)
  lengths = jnp.asarray(np.random.default_rng(1).integers(5, 31, 64))
  out = np.asarray(speech.spec_augment(jax.random.key(0), features, lengths, config))
  again = np.asarray(speech.spec_augment(jax.random.key(0), features, lengths, config))
  np.testing.assert_array_equal(out, again)
  zero = out == 0
  kept = ~zero
  np.testing.assert_array_equal(out[kept], np.asarray(features)[kept])
  for i in range(64):
    bins = np.all(zero[i], axis=0)  # masked mel bins: zero at every frame
    frames = np.all(zero[i], axis=1)
    assert bins.sum() <= 6 and frames.sum() <= 8
    assert not frames[int(lengths[i]):].any()  # spans stay inside the utterance
    # every zero is explained by a masked bin or a masked frame
    np.testing.assert_array_equal(zero[i], bins[None, :] | frames[:, None])
  assert zero.any(axis=(1, 2)).mean() > 0.5  # masks are drawn, not all empty


@pytest.mark.parametrize("score", ["additive", "location_aware"])
def test_decode_steps_equal_teacher_forcing(score):
  task = _task(score=score)
  batch = _batch(2)
  params = task.init(jax.random.key(2), batch)["params"]
  model = task.model
  forced = task.apply(params, batch)["attention"]
  variables = {"params": params}
  encoded = model.apply(variables, batch["inputs"], batch["input_lengths"], method=model.encode)
  state = model.apply(variables, encoded, batch["input_lengths"], method=model.init_decode_state)
  for t in range(batch["decoder_inputs"].shape[1]):
    logits, state = model.apply(variables, state, batch["decoder_inputs"][:, t],
                                method=model.decode_step)
    np.testing.assert_allclose(logits[:2], forced[:2, t], rtol=1e-5, atol=1e-5)


def test_decode_weights_pick_the_decoder():
  batch = _batch(4, frames=(21, 13), targets=(4, 2))
  task = _task(0.5)
  params = task.init(jax.random.key(4), batch)["params"]
  model = task.model
  variables = {"params": params}
  encoded = model.apply(variables, batch["inputs"], batch["input_lengths"], method=model.encode)
  state = model.apply(variables, encoded, batch["input_lengths"], method=model.init_decode_state)
  step = lambda s, t: model.apply(variables, s, t, method=model.decode_step)
  att = decode.greedy(step, state, 2, bos_id=BOS_ID, eos_id=EOS_ID, max_len=6)
  ours = speech.SpeechTask(model, None, ctc_weight=0.5, ctc_decode_weight=0.0)
  np.testing.assert_array_equal(ours.predict(params, batch, max_len=6), att)
  log_probs = jax.nn.log_softmax(model.apply(variables, encoded, method=model.ctc_logits))
  best_path = decode.ctc.greedy(log_probs, encoded["frames"], blank=0, eos_id=EOS_ID,
                                max_len=6)
  ctc_only = speech.SpeechTask(model, None, ctc_weight=0.5, ctc_decode_weight=1.0)
  np.testing.assert_array_equal(ctc_only.predict(params, batch, max_len=6), best_path)


def test_bad_weights_and_shapes_are_one_line_errors():
  with pytest.raises(ValueError, match="needs a trained CTC head"):
    speech.SpeechTask(_model(), None, ctc_weight=0.0, ctc_decode_weight=0.3)
  with pytest.raises(ValueError, match="needs a trained attention decoder"):
    speech.SpeechTask(_model(), None, ctc_weight=1.0, ctc_decode_weight=0.5)
  with pytest.raises(ValueError, match="encoder_type='conformer' is unknown"):
    _model(encoder_type="conformer")
  task = _task()
  batch = _batch()
  params = task.init(jax.random.key(0), batch)["params"]
  with pytest.raises(ValueError, match=r"float \[batch, frames, 12\], got shape \(3, 24, 7\)"):
    task.apply(params, dict(batch, inputs=batch["inputs"][..., :7]))


def test_monotonic_counts_peaked_steps_that_do_not_move_back():
  weights = np.full((2, 4, 5), 0.2, np.float32)  # row 1: flat, never peaked
  for t, frame in enumerate([0, 2, 1, 3]):  # row 0: forward, back, forward
    weights[0, t] = 0.05
    weights[0, t, frame] = 0.8  # 4 times the uniform 1/5
  weights[0, 3, 3] = 0.7  # under 4 times uniform: not peaked, though forward
  batch = {"targets": np.zeros((2, 4), np.int32), "target_lengths": np.array([4, 3]),
           "weights": np.ones(2, np.float32)}
  got = speech.monotonic_steps(jnp.asarray(weights), jnp.array([5, 5]), batch)
  assert float(got["forward_steps"]) == 1.0  # step 1 of row 0 only
  assert float(got["decoder_steps"]) == 3.0 + 2.0


class _Frames:
  """A data set of which only the longest input of each split is known."""
  name = "spoken_digits/words"
  splits = {"train": 10, "test": 2}
  feature_dim = MEL

  def max_lengths(self, split):
    return (700 if split == "test" else 300), 20


def test_inputs_longer_than_the_transformer_positions_are_refused_before_training():
  model = _model(encoder_type="transformer", bidirectional=False, max_frames=512)
  task = speech.SpeechTask(model, _Frames())
  with pytest.raises(ValueError, match=r"spoken_digits/words/test has utterances of up to 700 "
                                       r"frames, more than model.max_frames=512"):
    task.check_data()
  speech.SpeechTask(_model(max_frames=512), _Frames()).check_data()  # lstm: no limit


def test_text_data_for_speech_and_frames_for_text_are_refused():
  with pytest.raises(ValueError, match=r"needs frames of model.feature_dim=12; "
                                       r"data.name='cmudict_g2p/stress' has text"):
    speech.SpeechTask(_model(), type("Text", (), {"name": "cmudict_g2p/stress"})()).check_data()
  with pytest.raises(ValueError, match=r"has feature frames, not text: use task.name='speech'"):
    Seq2SeqTask(_model(), _Frames()).check_data()
