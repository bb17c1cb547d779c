"""Pure train and eval steps over any task's loss (`tasks.Task.loss`).

The steps know nothing of a model or a batch's keys: the task's
`loss(params, batch, rng, *, train) -> (loss, metrics)` is all they call.
"""
from __future__ import annotations

from typing import Callable

import jax
import optax
from flax.training import train_state

Array = jax.Array
LossFn = Callable[..., tuple[Array, dict]]


class TrainState(train_state.TrainState):
  """Step, params, optimizer state and the model's `apply` (static)."""


def train_step(state: TrainState, batch: dict, rng: Array, *, loss_fn: LossFn,
               schedule: optax.Schedule | None = None) -> tuple[TrainState, dict]:
  """One optimizer step. `rng` is the run's key; the step folds in its number, so a
  resumed run draws the same dropout and samples. Returns (new state, metrics)."""
  step_rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(lambda p: loss_fn(p, batch, step_rng, train=True), has_aux=True)
  (loss, metrics), grads = grad_fn(state.params)
  new_state = state.apply_gradients(grads=grads)
  metrics = dict(metrics, loss=loss, l2_grads=optax.tree.norm(grads),
                 l2_params=optax.tree.norm(new_state.params))
  if schedule is not None:
    metrics["learning_rate"] = schedule(state.step)
  return new_state, metrics


def eval_step(params, batch: dict, *, loss_fn: LossFn) -> dict:
  """The task's teacher-forced sums over one batch (no randomness, no dropout)."""
  return loss_fn(params, batch, None, train=False)[1]
