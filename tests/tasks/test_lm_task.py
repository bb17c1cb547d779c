"""The LM task: its loss and metrics against NumPy, and prompted decoding against a brute-force
decode by full forward passes."""
import math

import jax
import numpy as np
import pytest

from attention_jax.models.registry import build_model
from attention_jax.tasks import LMTask

V, T = 11, 8


def _task(max_len=16):
  model = build_model(dict(name="lm", vocab_size=V, d_model=16, num_heads=2, d_ff=32,
                           num_layers=2, max_len=max_len, dropout_rate=0.0))
  return LMTask(model, None, seq_len=T)


def _batch(seed=0, b=4):
  rng = np.random.default_rng(seed)
  stream = rng.integers(4, V, (b, T + 1)).astype(np.int32)
  batch = {"inputs": stream[:, :-1], "targets": stream[:, 1:],
           "target_lengths": np.array([T, T, 5, 0], np.int32)[:b],
           "weights": np.array([1, 1, 1, 0], np.float32)[:b], "index": np.arange(b, dtype=np.int32)}
  return batch


def test_eval_sums_and_metrics_match_numpy():
  task, batch = _task(), _batch()
  params = task.init(jax.random.key(0), batch)["params"]
  logits = np.asarray(task.model.apply({"params": params}, batch["inputs"]), np.float64)
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  nll = -np.take_along_axis(log_p, batch["targets"][..., None], -1)[..., 0]
  mask = (np.arange(T)[None] < batch["target_lengths"][:, None]) * batch["weights"][:, None]
  _, sums = task.loss(params, batch, None, train=False)
  np.testing.assert_allclose(float(sums["tokens"]), mask.sum())
  np.testing.assert_allclose(float(sums["nll_sum"]), (nll * mask).sum(), rtol=1e-5)
  correct = (logits.argmax(-1) == batch["targets"]) * mask
  np.testing.assert_allclose(float(sums["correct"]), correct.sum())
  metrics = task.finish({k: float(v) for k, v in sums.items()})
  mean = (nll * mask).sum() / mask.sum()
  np.testing.assert_allclose(metrics["perplexity"], math.exp(mean), rtol=1e-5)
  np.testing.assert_allclose(metrics["bits_per_token"], mean / math.log(2), rtol=1e-5)


def test_greedy_continuation_equals_full_forward_argmax():
  task, batch = _task(), _batch(1)
  params = task.init(jax.random.key(1), batch)["params"]
  prompt_len, steps = 3, 6
  ids = np.asarray(task.predict(params, batch, method="greedy", max_len=steps,
                                prompt_len=prompt_len))
  forward = jax.jit(task.model.apply)  # one compile per prefix length, not one per op
  for row in range(batch["inputs"].shape[0]):
    seq = list(batch["inputs"][row, :prompt_len])
    for t in range(steps):  # re-run the whole prefix each time: no cache involved
      logits = forward({"params": params}, np.asarray([seq], np.int32))
      nxt = int(np.argmax(logits[0, -1]))
      assert ids[row, t] == nxt, (row, t)
      if nxt == 2:  # EOS ends the continuation; pads follow
        assert (ids[row, t + 1:] == 0).all()
        break
      seq.append(nxt)


def test_a_prompt_and_decode_past_the_positional_table_is_refused():
  task, batch = _task(max_len=10), _batch()
  params = task.init(jax.random.key(0), batch)["params"]
  with pytest.raises(ValueError, match=r"prompt_len \+ max_len=11 is longer .*model.max_len=10"):
    task.predict(params, batch, max_len=8, prompt_len=3)
  with pytest.raises(ValueError, match="prompt_len=9 must be in"):
    task.predict(params, batch, max_len=1, prompt_len=9)
