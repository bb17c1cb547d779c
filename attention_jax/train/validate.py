"""Config checks that run before anything is written: each problem is one ConfigError that
names the key and the allowed values (the CLI prints it and exits with code 2)."""
from __future__ import annotations

import math

import jax

from attention_jax import data, tasks
from attention_jax.attention import core
from attention_jax.evaluate import metrics as metrics_lib
from attention_jax.train import evaluators, optim, partition


class ConfigError(ValueError):
  """A config that cannot run; the message names the key."""


def check_config(config) -> None:
  """Every check that needs no data."""
  try:
    base, _ = data.registry.parse_name(config.data.name)
  except data.DataError as e:
    raise ConfigError(f"data.name={config.data.name!r}: {e}") from None
  if config.data.get("tokenizer") not in (None, *data.registry.TOKENIZERS):
    raise ConfigError(f"data.tokenizer={config.data.tokenizer!r} is unknown; known: "
                      f"{', '.join(data.registry.TOKENIZERS)}")
  if config.data.get("vocab_size") is not None and config.data.vocab_size < 8:
    raise ConfigError(f"data.vocab_size must be at least 8, got {config.data.vocab_size}")
  check_ranges(config)
  _check_implementation(config)
  try:
    task = tasks.build_task(config, None, vocab_size=16)
    _check_mesh(config)
    optim.make_optimizer(config.optim, config.train.steps)
    jax.eval_shape(lambda: task.init(jax.random.key(0), task.example_batch(2)))
    for name, cfg in config.evals.items():
      evaluators.check(name, cfg, task, data.registry.DATASETS[base].splits)
  except ConfigError:
    raise
  except (ValueError, TypeError, ArithmeticError) as e:
    raise ConfigError(f"{type(e).__name__}: {e}" if isinstance(e, ArithmeticError) else str(e)
                      ) from None
  _check_selection(config, task)
  selection_metric(config, task)  # the metric names need no data


def _check_implementation(config) -> None:
  """model.implementation: a known attention backend, and one this machine can run."""
  implementation = config.model.get("implementation")
  if implementation is None:
    return
  if implementation not in core.IMPLEMENTATIONS:
    raise ConfigError(f"model.implementation={implementation!r} is unknown; known: "
                      f"{', '.join(core.IMPLEMENTATIONS)}")
  try:
    core.check_device(implementation)
  except ValueError as e:
    raise ConfigError(f"model.{e}") from None


INF = math.inf
# Allowed intervals, as (key, low, high, bounds) with '[' / ']' closed and '(' / ')' open;
# NaN and infinities are refused everywhere. keep_checkpoints >= 1: 0 would delete the only
# checkpoint, and with it the resume and the "already finished" answer of a rerun. A zero
# learning rate is allowed (a frozen model is a baseline); a negative one is gradient ascent.
RANGES = (
    ("train.steps", 1, INF, "[)"), ("train.log_every", 1, INF, "[)"),
    ("train.checkpoint_every", 0, INF, "[)"), ("train.keep_checkpoints", 1, INF, "[)"),
    ("train.early_stop_patience", 0, INF, "[)"),
    ("optim.learning_rate", 0, INF, "[)"), ("optim.warmup_steps", 0, INF, "[)"),
    ("optim.b1", 0, 1, "[)"), ("optim.b2", 0, 1, "[)"), ("optim.momentum", 0, 1, "[)"),
    ("optim.weight_decay", 0, INF, "[)"), ("optim.grad_clip_norm", 0, INF, "[)"),
    ("optim.ema_decay", 0, 1, "[)"),
    ("task.label_smoothing", 0, 1, "[)"), ("model.temperature", 0, INF, "()"),
    ("task.ctc_weight", 0, 1, "[]"), ("task.ctc_decode_weight", 0, 1, "[]"),
    ("task.freq_masks", 0, INF, "[)"), ("task.freq_width", 0, INF, "[)"),
    ("task.time_masks", 0, INF, "[)"), ("task.time_width", 0, INF, "[)"),
    ("task.sort_window", 0, INF, "[)"), ("task.doubly_stochastic", 0, INF, "[)"),
    ("task.entropy_bonus", 0, INF, "[)"), ("model.expected_context_prob", 0, 1, "[]"),
    ("model.grid_blocks", 0, INF, "[)"), ("model.image_height", 1, INF, "[)"),
    ("model.gumbel_temperature", 0, INF, "()"),
)
# Model fields that are sizes or counts (>= 1 when set) and rates in [0, 1), by name.
SIZE_SUFFIXES = ("_dim", "_layers", "_heads", "d_model", "d_ff", "max_len", "window",
                 "_channels", "_filters", "_width", "_frames")
EVAL_RANGES = (("beam_alpha", 0, INF, "[)"), ("temperature", 0, INF, "()"))


def check_range(key: str, value, low: float, high: float, bounds: str) -> None:
  """A ConfigError unless `value` is a finite number in the interval (None: unset, fine)."""
  if value is None or isinstance(value, bool):
    return
  ok = isinstance(value, (int, float)) and math.isfinite(value) and (
      value > low if bounds[0] == "(" else value >= low) and (
      value < high if bounds[1] == ")" else value <= high)
  if not ok:
    raise ConfigError(f"{key}={value!r} is out of range; allowed: a number in "
                      f"{bounds[0]}{low}, {high}{bounds[1]}")


def check_ranges(config) -> None:
  """Every numeric value with a meaningful range, NaN and infinities refused."""
  for key, low, high, bounds in RANGES:
    section, name = key.split(".")
    check_range(key, config[section].get(name), low, high, bounds)
  for name, value in config.model.items():
    if name.endswith("dropout_rate"):
      check_range(f"model.{name}", value, 0, 1, "[)")
    elif name.endswith(SIZE_SUFFIXES):
      check_range(f"model.{name}", value, 1, INF, "[)")
  for ev_name, ev in config.evals.items():
    for name, low, high, bounds in EVAL_RANGES:
      check_range(f"evals.{ev_name}.{name}", ev.get(name), low, high, bounds)


def _check_mesh(config) -> None:
  mesh = partition.make_mesh(config.train.mesh_shape)
  for key in ("batch_size", "eval_batch_size"):
    size = config.data[key]
    if size < 1 or size % mesh.shape["data"] or size % jax.process_count():
      raise ConfigError(f"data.{key}={size} is not a positive multiple of the "
                        f"{mesh.shape['data']} devices on the mesh's data axis (and of the "
                        f"{jax.process_count()} processes)")


def _check_selection(config, task) -> None:
  name = config.train.select_eval
  periodic = [n for n, cfg in config.evals.items() if cfg.every and not cfg.use_best]
  if name not in periodic:
    raise ConfigError(f"train.select_eval={name!r} is not a periodic evaluator (every > 0, "
                      f"use_best False); periodic: {', '.join(periodic) or 'none'}")
  if any(cfg.use_best for cfg in config.evals.values()) and not periodic:
    raise ConfigError("an evaluator has use_best=True but no periodic evaluator picks a best step")


def check_with_data(config, task) -> None:
  """Checks that need the data: splits, decode budgets, metric names."""
  try:
    task.check_data()
    for name, cfg in config.evals.items():
      evaluators.check(name, cfg, task, list(task.dataset.splits))
      if cfg.decode != "none":
        evaluators.decode_budget(task, cfg, name)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  selection_metric(config, task)


def selection_metric(config, task) -> str:
  """`train.select_by`, or the select evaluator's headline: WER, else BLEU, else the loss."""
  known = task.metric_names(config.evals[config.train.select_eval].metrics)
  metric = config.train.select_by or next((m for m in ("wer", "bleu") if m in known), "loss")
  if metric not in known:
    raise ConfigError(f"train.select_by={metric!r} is not a metric of evaluator "
                      f"{config.train.select_eval!r}; known: {', '.join(known)}")
  metrics_lib.higher_is_better(metric)
  return metric
