"""Optimizer and learning-rate schedule from `config.optim`."""
from __future__ import annotations

from typing import Any, Mapping

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
  return tx, schedule
