"""What every task gives the trainer: its batches, a pure loss, predictions and scores.

The trainer knows tasks, never a model's call signature. A task owns what
depends on what a batch and a prediction are:

  example_batch(batch_size)            NumPy batch of the right shapes and dtypes (init, eval_shape)
  init(rng, batch)                     the model's variables
  loss(params, batch, rng, *, train)   (scalar loss, metrics): pure, jittable; metrics are
                                       per-token means, or sums when train=False (see below)
  batches(split, ...)                  a grain pipeline of NumPy batches with a saveable state
  predict(params, batch, ...)          decoded ids through `attention_jax.decode`
  score(predictions, examples, ...)    host-side metrics through `attention_jax.evaluate`

`loss(..., train=False)` returns sums over the batch's real tokens (`loss_sum`,
`nll_sum`, `correct`, `tokens`), which an evaluator adds up over batches and
turns into metrics with `finish`, so a split's metrics weigh every token alike.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def token_mask(batch: dict) -> Array:
  """float32 `[B, T]`: 1 on real target tokens (EOS included) of real rows."""
  t = batch["targets"].shape[1]
  real = jnp.arange(t)[None, :] < batch["target_lengths"][:, None]
  return real.astype(jnp.float32) * batch["weights"][:, None]


def cross_entropy(logits: Array, targets: Array, label_smoothing: float) -> tuple[Array, Array]:
  """Per-token (smoothed loss, plain NLL), `[B, T]` each.

  The smoothed target puts 1 - eps on the label and eps / V on every class
  (Szegedy et al. 2016; Vaswani et al. 2017 use eps = 0.1).
  """
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  nll = lse - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  if not label_smoothing:  # a Python float: at 0 skip a pass over [B, T, V], forward and backward
    return nll, nll
  smooth = lse - jnp.mean(logits, axis=-1)  # cross-entropy against the uniform distribution
  return (1.0 - label_smoothing) * nll + label_smoothing * smooth, nll


def token_losses(logits: Array, batch: dict, label_smoothing: float
                 ) -> tuple[Array, dict, tuple[Array, Array]]:
  """(mean smoothed loss, sums over real tokens, (per-token NLL, mask) `[B, T]`) of
  next-token logits `[B, T, V]` against the batch's targets: what every teacher-forced
  task trains and evaluates on."""
  mask = token_mask(batch)
  tokens = jnp.maximum(jnp.sum(mask), 1.0)
  smoothed, nll = cross_entropy(logits, batch["targets"], label_smoothing)
  loss = jnp.sum(smoothed * mask) / tokens
  correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
  sums = {"loss_sum": jnp.sum(smoothed * mask), "nll_sum": jnp.sum(nll * mask),
          "correct": jnp.sum(correct * mask), "tokens": jnp.sum(mask)}
  return loss, sums, (nll, mask)


def means(sums: dict) -> dict:
  """Training metrics from `token_losses`: per-token means and the token count."""
  tokens = jnp.maximum(sums["tokens"], 1.0)
  return {"nll": sums["nll_sum"] / tokens, "accuracy": sums["correct"] / tokens,
          "tokens": tokens}


class Task:
  """The interface; `Seq2SeqTask` and `LMTask` implement it."""

  name = ""
  prompted = False  # whether decoding continues a prompt taken from the batch (lm)
  model: Any  # the Flax module
  dataset: Any  # the `data.Dataset`

  def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    raise NotImplementedError

  def init(self, rng: Array, batch: dict) -> dict:
    raise NotImplementedError

  def apply(self, params, batch: dict, *, rngs=None, train: bool = False, mutable=()):
    """The model's forward pass on a batch; with `mutable`, (outputs, collections)."""
    raise NotImplementedError

  def intermediates(self, params, batch: dict) -> tuple[Any, dict]:
    """(outputs, sown intermediates) of the deterministic forward pass, for drawing."""
    return self._sown_forward(params, batch)

  @functools.cached_property
  def _sown_forward(self):
    # Jitted once per task (and shape): run eagerly, each of the forward pass's ops would
    # dispatch, and compile, on its own (seconds per drawing).
    return jax.jit(functools.partial(self.apply, mutable=("intermediates",)))

  def loss(self, params, batch: dict, rng: Array | None, *, train: bool) -> tuple[Array, dict]:
    raise NotImplementedError

  def batches(self, split: str, *, batch_size: int, seed: int = 0, train: bool = False,
              indices: Sequence[int] | None = None):
    raise NotImplementedError

  def num_examples(self, split: str) -> int:
    """Records (or windows) an evaluator of `split` samples from."""
    raise NotImplementedError

  def finish(self, sums: dict[str, float]) -> dict[str, float]:
    """Split metrics from the summed `loss(..., train=False)` outputs."""
    tokens = max(sums["tokens"], 1.0)
    return {"loss": sums["loss_sum"] / tokens, "nll": sums["nll_sum"] / tokens,
            "accuracy": sums["correct"] / tokens}

  def metric_names(self, scorers: str) -> list[str]:
    """Every metric an evaluator with these scorers reports."""
    raise NotImplementedError

  def check_data(self) -> None:
    """A ValueError naming the split and the model's limit when the data cannot fit the
    model (checked before anything is written)."""

  def decode_limit(self) -> int | None:
    """The longest decode the model can run (positional table, KV cache); None: no limit."""
    return None

  def default_decode_len(self, split: str, prompt_len: int = 0) -> int:
    """The decode budget when an evaluator sets none."""
    raise NotImplementedError

  def check_decode_len(self, max_len: int, what: str) -> None:
    """A ValueError naming both lengths when `max_len` exceeds the model's limit."""
    limit = self.decode_limit()
    if limit is not None and max_len > limit:
      raise ValueError(f"{what}={max_len} is longer than the model's positional table and KV "
                       f"cache (model.max_len={limit})")
