"""Optimizer, learning-rate schedule and parameter averaging from `config.optim`."""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "rsqrt", "cosine")


def make_schedule(optim: Mapping[str, Any], total_steps: int) -> optax.Schedule:
  """Linear warmup to `learning_rate`, then constant, inverse square root or cosine decay.

  rsqrt: lr * sqrt(warmup / step) after warmup (Vaswani et al. 2017, up to scale).
  """
  lr, warmup, kind = optim["learning_rate"], optim["warmup_steps"], optim["schedule"]
  if kind not in SCHEDULES:
    raise ValueError(f"optim.schedule={kind!r} is unknown; known: {', '.join(SCHEDULES)}")
  warm = optax.linear_schedule(0.0, lr, warmup) if warmup > 0 else optax.constant_schedule(lr)
  if kind == "constant":
    after = optax.constant_schedule(lr)
  elif kind == "rsqrt":
    start = max(warmup, 1)
    after = lambda step: lr * (start / (step + start)) ** 0.5
  else:
    after = optax.cosine_decay_schedule(lr, max(total_steps - warmup, 1))
  return optax.join_schedules([warm, after], [warmup])


def make_optimizer(optim: Mapping[str, Any], total_steps: int) -> tuple[
    optax.GradientTransformation, optax.Schedule]:
  """AdamW (or Adam / SGD) with global-norm clipping; returns (tx, schedule)."""
  schedule = make_schedule(optim, total_steps)
  name = optim["name"]
  if name == "adamw":
    opt = optax.adamw(schedule, b1=optim["b1"], b2=optim["b2"],
                      weight_decay=optim["weight_decay"])
  elif name == "adam":
    opt = optax.adam(schedule, b1=optim["b1"], b2=optim["b2"])
  elif name == "sgd":
    opt = optax.sgd(schedule, momentum=optim.get("momentum") or None)
  else:
    raise ValueError(f"optim.name={name!r} is unknown; known: adamw, adam, sgd")
  clip = optim["grad_clip_norm"]
  tx = optax.chain(optax.clip_by_global_norm(clip), opt) if clip else opt
  decay = optim.get("ema_decay", 0.0)  # absent from configs written before it existed
  if decay:
    tx = optax.chain(tx, params_ema(decay))
  return tx, schedule


class ParamsEmaState(NamedTuple):
  """The moving average of the parameters after each step, and the steps it has seen."""
  count: jax.Array
  ema: Any


def params_ema(decay: float) -> optax.GradientTransformation:
  """Keeps an exponential moving average of the parameters in the optimizer state (Polyak
  averaging), leaving the updates as they are; last in a chain, it sees the final update.

  Step t keeps min(decay, (1 + t) / (10 + t)) of the average, as TensorFlow's
  ExponentialMovingAverage with num_updates: the average leaves the initial parameters
  within tens of steps, where a fixed decay of 0.999 would hold them for thousands.
  `eval_params` reads the average back.
  """
  def init(params):
    return ParamsEmaState(jnp.zeros([], jnp.int32), jax.tree.map(jnp.copy, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("params_ema needs the parameters: call tx.update(updates, state, params)")
    t = state.count.astype(jnp.float32)
    rate = 1.0 - jnp.minimum(decay, (1.0 + t) / (10.0 + t))
    ema = optax.incremental_update(optax.apply_updates(params, updates), state.ema, rate)
    return updates, ParamsEmaState(state.count + 1, ema)

  return optax.GradientTransformation(init, update)


def eval_params(state):
  """The parameters to evaluate and decode with: the moving average where the optimizer
  keeps one (`optim.ema_decay` > 0), else the trained parameters."""
  averaged = optax.tree_utils.tree_get(state.opt_state, "ParamsEmaState")
  return state.params if averaged is None else averaged.ema
