"""An ensemble of text-to-text models, for evaluation and decoding.

Its distribution pools the members', token by token, in one of two ways (`combine`):
'probs', their mean probability, p(y_t | y_<t, x) = (1/N) sum_i p_i(y_t | y_<t, x);
'log_probs', their mean log-probability renormalised (the normalised geometric mean,
p proportional to prod_i p_i^(1/N)). Either way every decoder (greedy, beam search) and
every teacher-forced metric works on it unchanged: `apply` returns log p as the logits
(log-softmax leaves it as it is), and decoding runs the N members' decode steps side by
side in one loop, one search over the pooled distribution. The members may differ in
architecture (an RNN and a Transformer) as long as they share the vocabularies.
Parameters are a tuple of the members' parameters. Training an ensemble is not this
module's business: each member trains alone.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp

from attention_jax.tasks import base
from attention_jax.tasks.seq2seq import Seq2SeqTask, search

Array = jax.Array

COMBINES = ("probs", "log_probs")


def pool(logits: list[Array], combine: str = "probs") -> Array:
  """The pooled log-distribution of the members' logits, in float32."""
  log_probs = jnp.stack([jax.nn.log_softmax(x.astype(jnp.float32), axis=-1) for x in logits])
  if combine == "log_probs":
    return jax.nn.log_softmax(jnp.mean(log_probs, axis=0), axis=-1)
  return jax.nn.logsumexp(log_probs, axis=0) - jnp.log(float(len(logits)))


@functools.partial(jax.jit, static_argnames=("models", "combine", "method", "beam_size",
                                             "alpha", "max_len"))
def _decode(params: tuple, inputs: Array, input_lengths: Array, *, models: tuple, combine: str,
            method: str, beam_size: int, alpha: float, max_len: int) -> Array:
  """`seq2seq._decode` over the members' pooled distribution."""
  states = []
  for model, p in zip(models, params):
    encoded = model.apply({"params": p}, inputs, input_lengths, method=model.encode)
    states.append(model.apply({"params": p}, encoded, input_lengths,
                              method=model.init_decode_state))

  def step(states, tokens):
    outs = [model.apply({"params": p}, s, tokens, method=model.decode_step)
            for model, p, s in zip(models, params, states)]
    return pool([logits for logits, _ in outs], combine), tuple(s for _, s in outs)

  return search(step, tuple(states), inputs.shape[0], method=method, beam_size=beam_size,
                alpha=alpha, max_len=max_len)


class EnsembleTask(Seq2SeqTask):
  """A `Seq2SeqTask` (the plain text-to-text task) whose parameters are a tuple of its
  members' parameters. `members` is one task (every member its model) or one task per
  member (member i decodes with the model of `members[i]`); the data, the scoring and the
  rest are the first member's."""

  def __init__(self, members: Seq2SeqTask | Sequence[Seq2SeqTask], combine: str = "probs"):
    tasks = tuple(members) if isinstance(members, (list, tuple)) else (members,)
    for task in tasks:
      if type(task) is not Seq2SeqTask:  # pylint: disable=unidiomatic-typecheck
        raise ValueError(f"ensembles are built for task 'seq2seq' (text to text), not "
                         f"{task.name!r}")
    if combine not in COMBINES:
      raise ValueError(f"combine={combine!r} is unknown; known: {', '.join(COMBINES)}")
    first = tasks[0]
    super().__init__(first.model, first.dataset, label_smoothing=first.label_smoothing)
    self.first = first
    self.members = tasks if isinstance(members, (list, tuple)) else None
    self.combine = combine

  def _tasks(self, params) -> tuple:
    """Each member's task, one per parameter set."""
    if self.members is None:
      return (self.first,) * len(params)
    if len(params) != len(self.members):
      raise ValueError(f"{len(params)} parameter sets for an ensemble of "
                       f"{len(self.members)} members")
    return self.members

  def apply(self, params, batch, *, rngs=None, train=False, mutable=()):
    if train or mutable:
      raise ValueError("an ensemble is evaluated, not trained: train its members")
    return pool([t.apply(p, batch) for t, p in zip(self._tasks(params), params)], self.combine)

  def loss(self, params, batch, rng, *, train):
    loss, sums, _ = base.token_losses(self.apply(params, batch, train=train), batch,
                                      self.label_smoothing)
    return loss, sums

  def decode_limit(self) -> int | None:
    """The tightest of the members' limits (None: none has one)."""
    limits = [t.decode_limit() for t in self.members or (self.first,)]
    return min((x for x in limits if x is not None), default=None)

  def predict(self, params, batch, *, method: str = "greedy", max_len: int, beam_size: int = 4,
              alpha: float = 0.6, all_beams: bool = False, rng=None, **_) -> Array:
    del rng
    self.check_decode_len(max_len, "the decode length")
    method = "beams" if method == "beam" and all_beams else method
    models = tuple(t.model for t in self._tasks(params))
    return _decode(tuple(params), batch["inputs"], batch["input_lengths"], models=models,
                   combine=self.combine, method=method, beam_size=beam_size, alpha=alpha,
                   max_len=max_len)

  def heatmap_figures(self, params, batch: dict, n: int, step: int) -> dict:
    return {}  # N attention maps per token: draw the members'
