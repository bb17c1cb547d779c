"""Config checks that run before anything is written: each problem is one ConfigError that
names the key and the allowed values (the CLI prints it and exits with code 2)."""
from __future__ import annotations

import jax

from attention_jax import data, tasks
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
  for key, low in (("train.steps", 1), ("train.log_every", 1), ("train.checkpoint_every", 0),
                   ("train.keep_checkpoints", 1), ("train.early_stop_patience", 0)):
    section, name = key.split(".")
    if config[section][name] < low:
      raise ConfigError(f"{key} must be at least {low}, got {config[section][name]}")
  try:
    task = tasks.build_task(config, None, vocab_size=16)
    _check_mesh(config)
    optim.make_optimizer(config.optim, config.train.steps)
    jax.eval_shape(lambda: task.init(jax.random.key(0), task.example_batch(2)))
    splits = [ours for ours, _ in data.registry.DATASETS[base].split_names]
    for name, cfg in config.evals.items():
      evaluators.check(name, cfg, task, splits)
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(str(e)) from None
  _check_selection(config, task)


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
