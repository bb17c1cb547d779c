"""An ensemble of text-to-text models of one architecture, for evaluation and decoding.

Its distribution is the members' mean probability, token by token:
p(y_t | y_<t, x) = (1/N) sum_i p_i(y_t | y_<t, x), so every decoder (greedy, beam
search) and every teacher-forced metric works on it unchanged: `apply` returns
log p as the logits (log-softmax leaves it as it is), and decoding runs the N
members' decode steps side by side in one loop, one beam search over their
mean. Parameters are a tuple of the members' parameters. Training an ensemble
is not this module's business: each member trains alone.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from attention_jax.tasks import base
from attention_jax.tasks.seq2seq import Seq2SeqTask, search

Array = jax.Array


def mean_log_probs(logits: list[Array]) -> Array:
  """log of the mean of the members' softmaxes, in float32."""
  log_probs = jnp.stack([jax.nn.log_softmax(x.astype(jnp.float32), axis=-1) for x in logits])
  return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(float(len(logits)))


@functools.partial(jax.jit, static_argnames=("model", "method", "beam_size", "alpha", "max_len"))
def _decode(params: tuple, inputs: Array, input_lengths: Array, *, model, method: str,
            beam_size: int, alpha: float, max_len: int) -> Array:
  """`seq2seq._decode` over the members' mean distribution."""
  states = []
  for p in params:
    encoded = model.apply({"params": p}, inputs, input_lengths, method=model.encode)
    states.append(model.apply({"params": p}, encoded, input_lengths,
                              method=model.init_decode_state))

  def step(states, tokens):
    outs = [model.apply({"params": p}, s, tokens, method=model.decode_step)
            for p, s in zip(params, states)]
    return mean_log_probs([logits for logits, _ in outs]), tuple(s for _, s in outs)

  return search(step, tuple(states), inputs.shape[0], method=method, beam_size=beam_size,
                alpha=alpha, max_len=max_len)


class EnsembleTask(Seq2SeqTask):
  """A `Seq2SeqTask` (the plain text-to-text task) whose parameters are a tuple of its
  members' parameters; everything but the distribution is the member task's."""

  def __init__(self, task: Seq2SeqTask):
    if type(task) is not Seq2SeqTask:  # pylint: disable=unidiomatic-typecheck
      raise ValueError(f"ensembles are built for task 'seq2seq' (text to text), not "
                       f"{task.name!r}")
    super().__init__(task.model, task.dataset, label_smoothing=task.label_smoothing)

  def apply(self, params, batch, *, rngs=None, train=False, mutable=()):
    if train or mutable:
      raise ValueError("an ensemble is evaluated, not trained: train its members")
    return mean_log_probs([super(EnsembleTask, self).apply(p, batch) for p in params])

  def loss(self, params, batch, rng, *, train):
    loss, sums, _ = base.token_losses(self.apply(params, batch, train=train), batch,
                                      self.label_smoothing)
    return loss, sums

  def predict(self, params, batch, *, method: str = "greedy", max_len: int, beam_size: int = 4,
              alpha: float = 0.6, all_beams: bool = False, rng=None, **_) -> Array:
    del rng
    self.check_decode_len(max_len, "the decode length")
    method = "beams" if method == "beam" and all_beams else method
    return _decode(tuple(params), batch["inputs"], batch["input_lengths"], model=self.model,
                   method=method, beam_size=beam_size, alpha=alpha, max_len=max_len)

  def heatmap_figures(self, params, batch: dict, n: int, step: int) -> dict:
    return {}  # N attention maps per token: draw the members'
