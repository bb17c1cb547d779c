"""The training loop: validate, build, resume, train, evaluate, checkpoint, report.

Outputs in the workdir: `config.json`, `metrics.jsonl`, `tensorboard/`,
`checkpoints/`, `attention/step_<N>/*.png` and, at the end, `result.json`.
Rerunning the same command resumes from the latest checkpoint (data position
included) and reaches the same parameters as an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import tempfile
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from attention_jax import data
from attention_jax.data import paths
from attention_jax.data import pipeline as data_pipeline
from attention_jax.models.registry import build_model
from attention_jax.train import checkpoint, evaluation, metrics as metrics_lib, optim
from attention_jax.train import partition, setup


class ConfigError(ValueError):
  """A config that cannot run; the message names the key."""


class NonFiniteError(RuntimeError):
  """Training produced a NaN or infinity."""


def _dummy_batch(batch_size: int, length: int = 8) -> dict:
  ids = np.full((batch_size, length), 4, np.int32)
  return {"inputs": ids, "input_lengths": np.full((batch_size,), length, np.int32),
          "decoder_inputs": ids, "targets": ids,
          "target_lengths": np.full((batch_size,), length, np.int32),
          "weights": np.ones((batch_size,), np.float32)}


def validate(config) -> None:
  """Every check that needs no data and writes nothing; raises ConfigError naming the key."""
  try:
    data.registry.parse_name(config.data.name)
  except data.DataError as e:
    raise ConfigError(f"data.name={config.data.name!r}: {e}") from None
  if config.model.name == "lm":
    raise ConfigError("model.name='lm': the trainer reads source/target pairs; the decoder-only "
                      "LM has no data pipeline yet")
  if config.train.decode not in ("greedy", "beam"):
    raise ConfigError(f"train.decode={config.train.decode!r} is unknown; known: greedy, beam")
  if config.data.get("tokenizer") not in (None, *data.registry.TOKENIZERS):
    raise ConfigError(f"data.tokenizer={config.data.tokenizer!r} is unknown; known: "
                      f"{', '.join(data.registry.TOKENIZERS)}")
  if config.data.get("vocab_size") is not None and config.data.vocab_size < 8:
    raise ConfigError(f"data.vocab_size must be at least 8, got {config.data.vocab_size}")
  for key in ("batch_size", "eval_batch_size"):
    if config.data[key] < 1:
      raise ConfigError(f"data.{key} must be positive, got {config.data[key]}")
  try:
    optim.make_optimizer(config.optim, config.train.steps)
    mesh = partition.make_mesh(config.train.mesh_shape)
    if config.data.batch_size % mesh.shape["data"]:
      raise ConfigError(f"data.batch_size={config.data.batch_size} is not a multiple of the "
                        f"{mesh.shape['data']} devices on the mesh's data axis")
    model = build_model(dict(config.model, vocab_size=16))
    jax.eval_shape(lambda: model.init(jax.random.key(0), *_model_args(_dummy_batch(2))))
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(str(e)) from None


def _model_args(batch: dict) -> tuple:
  return batch["inputs"], batch["input_lengths"], batch["decoder_inputs"]


def _write_json(path: str, value) -> None:
  text = json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
  paths.atomic_write_bytes(path, text.encode())


def _prepare_workdir(workdir: str, config_json: str, write: bool) -> None:
  """Create the workdir; refuse one that holds a different run."""
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = tempfile.NamedTemporaryFile(dir=workdir)
    probe.close()
  except OSError as e:
    raise ConfigError(f"workdir {workdir!r} is not writable: {e.strerror}") from None
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) != json.loads(config_json):
        raise ConfigError(f"workdir {workdir!r} holds a run of another config "
                          f"(see {path}); use a new --workdir")
  elif write:
    _write_json(path, json.loads(config_json))


def _git_commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def _history(workdir: str, step: int) -> tuple[list[tuple[int, dict]], float]:
  """What metrics.jsonl holds up to `step`, for a resumed run: its eval records (for the best
  step and patience) and the wall seconds spent up to `step` (the last train record's
  elapsed_s; work after the checkpoint that a killed attempt did not save is not counted)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not step or not os.path.exists(path):
    return [], 0.0
  history, elapsed = {}, 0.0
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if row["step"] > step:
        continue
      if row.pop("split") == "eval":
        history[row.pop("step")] = row  # a step evaluated twice (killed, resumed): the last
      elif "elapsed_s" in row:
        elapsed = row["elapsed_s"]
  return sorted(history.items()), elapsed


def _best(config, history) -> tuple[int | None, dict]:
  """(step, scores) of the best evaluation by the selection metric."""
  if not history:
    return None, {}
  key = evaluation.selection_metric(config, history[-1][1])
  best = history[0]
  for entry in history[1:]:
    if evaluation.better(key, entry[1][key], best[1][key]):
      best = entry
  return best


def _patience_ran_out(config, history) -> bool:
  patience = config.train.early_stop_patience
  if not patience or not history:
    return False
  best_step = _best(config, history)[0]
  return sum(1 for s, _ in history if s > best_step) >= patience


def _test(config, state, best_ckpt, history, model, dataset, mesh, eval_step, workdir, writer,
          progress, is_main) -> dict:
  """Scores the best eval step's parameters on `train.test_split`; writes every decoded
  example to `predictions_<split>.jsonl`. Returns the result.json fields."""
  split = config.train.test_split
  step = best_ckpt.latest_step() if best_ckpt is not None else None
  if step is not None:
    state = best_ckpt.restore(state)[0]
  examples = []
  scores, _ = evaluation.run(state, model, dataset, config, mesh, eval_step, step or 0, workdir,
                             writer, progress, split=split, limit=0, examples=examples,
                             draw=False)
  progress.write(f"{split} (step {step}): " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
  if is_main:
    text = "".join(json.dumps(e) + "\n" for e in examples)
    paths.atomic_write_bytes(os.path.join(workdir, f"predictions_{split}.jsonl"), text.encode())
  return {"test": scores, "test_split": split, "test_step": step}


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the experiment; returns the contents of `result.json`."""
  start_time = time.perf_counter()
  validate(config)
  get_dataset = lambda: data.from_config(config.data)
  if jax.process_count() > 1:  # process 0 builds missing data alone; the others then read it
    dataset = get_dataset() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices("attention_jax: data ready")
    dataset = dataset or get_dataset()
  else:
    dataset = get_dataset()
  for key in ("test_split",):
    if config.train[key] and config.train[key] not in dataset.splits:
      raise ConfigError(f"train.{key}={config.train[key]!r} is not a split of {dataset.name}; "
                        f"known: {', '.join(dataset.splits)}")
  model_config = dict(config.model, vocab_size=dataset.target_vocab.size)
  if config.model.name != "lm":
    model_config["src_vocab_size"] = dataset.input_vocab.size
  model = build_model(model_config)
  config_json = config.to_json_best_effort(sort_keys=True)
  is_main = jax.process_index() == 0  # the one process that writes files and prints
  _prepare_workdir(workdir, config_json, write=is_main)

  mesh = partition.make_mesh(config.train.mesh_shape)
  tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
  local_batch = config.data.batch_size // jax.process_count()
  train_iter = iter(data_pipeline.make_pipeline(dataset, "train", batch_size=local_batch,
                                                seed=config.seed))
  rng = jax.random.key(config.seed)
  state, shardings = setup.create_state(model, tx, rng, _dummy_batch(local_batch), mesh)
  ckpt = checkpoint.Checkpoints(workdir, config.train.checkpoint_every,
                                config.train.keep_checkpoints)
  # The best eval step's state, for the test split and early stopping.
  keep_best = bool(config.train.test_split or config.train.early_stop_patience)
  best_ckpt = checkpoint.Checkpoints(workdir, 0, keep=1, name="best") if keep_best else None
  step = 0
  if ckpt.latest_step() is not None:
    state, data_state, step = ckpt.restore(state)
    train_iter.set_state(data_state)
    if is_main:
      print(f"resumed from {workdir}/checkpoints at step {step}", flush=True)
    result_path = os.path.join(workdir, "result.json")
    if step >= config.train.steps and os.path.exists(result_path):
      if is_main:
        print(f"already finished: {result_path}", flush=True)
      with open(result_path) as f:
        return json.load(f)
  train_step, eval_step = setup.jit_steps(shardings, mesh,
                                          label_smoothing=config.train.label_smoothing,
                                          schedule=schedule)
  num_params = int(sum(np.prod(p.shape) for p in jax.tree.leaves(state.params)))

  stop = {"sigterm": False}
  previous = signal.signal(signal.SIGTERM, lambda *_: stop.update(sigterm=True))
  writer = metrics_lib.MetricWriter(workdir, enabled=is_main)
  progress = metrics_lib.Progress(step, config.train.steps, config.train.log_every,
                                  enabled=is_main)
  (history, elapsed_before), heatmap_dir = _history(workdir, step), None
  run_seconds = lambda: elapsed_before + time.perf_counter() - start_time  # all attempts

  def evaluate_now():
    nonlocal heatmap_dir
    scores, heatmap_dir = evaluation.run(state, model, dataset, config, mesh, eval_step, step,
                                         workdir, writer, progress)
    writer.write(step, "eval", scores)
    history.append((step, scores))
    progress.write(f"eval step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    if best_ckpt is not None and _best(config, history)[0] == step:
      best_ckpt.save(step, state, train_iter.get_state(), force=True)

  window_time, window_steps, window_tokens = time.perf_counter(), 0, 0.0
  try:
    while step < config.train.steps and not stop["sigterm"]:
      batch = next(train_iter)
      with partition.activate(mesh):
        new_state, metrics = train_step(state, partition.shard_batch(batch, mesh), rng)
      metrics = {k: float(v) for k, v in metrics.items()}
      bad = [k for k, v in metrics.items() if not np.isfinite(v)]
      if bad:
        raise NonFiniteError(
            f"non-finite {', '.join(bad)} at step {step + 1} (loss {metrics['loss']}); "
            f"the last good checkpoint is step {ckpt.latest_step()} in {workdir}/checkpoints")
      state, step = new_state, step + 1
      window_steps, window_tokens = window_steps + 1, window_tokens + metrics.pop("tokens")
      if step % config.train.log_every == 0 or step == config.train.steps:
        elapsed = time.perf_counter() - window_time
        metrics.update(steps_per_s=window_steps / elapsed, tokens_per_s=window_tokens / elapsed,
                       elapsed_s=run_seconds())
        writer.write(step, "train", metrics)
        window_time, window_steps, window_tokens = time.perf_counter(), 0, 0.0
      progress.update(step, metrics)
      if step % config.train.eval_every == 0 or step == config.train.steps:
        evaluate_now()
        if _patience_ran_out(config, history):
          progress.write(f"early stop at step {step}: no better "
                         f"{evaluation.selection_metric(config, history[-1][1])} in "
                         f"{config.train.early_stop_patience} evaluations")
          stop["early"] = True
          break
      ckpt.save(step, state, train_iter.get_state())
    ckpt.save(step, state, train_iter.get_state(), force=True)
    ckpt.wait()
    if not history and not stop["sigterm"]:  # resumed at the last step: evaluate it once
      evaluate_now()
    test = {}
    if config.train.test_split and not stop["sigterm"]:
      test = _test(config, state, best_ckpt, history, model, dataset, mesh, eval_step, workdir,
                   writer, progress, is_main)
  finally:
    signal.signal(signal.SIGTERM, previous)
    progress.close()
    writer.close()
    ckpt.close()
    if best_ckpt is not None:
      best_ckpt.close()
  if stop["sigterm"]:
    print(f"SIGTERM: saved step {step} to {workdir}/checkpoints; rerun to resume", flush=True)
    return {}

  best_step, best = _best(config, history)
  key = evaluation.selection_metric(config, history[-1][1]) if history else "loss"
  result = {"final": history[-1][1] if history else {}, "best": best, "best_step": best_step,
            "best_by": key, "step": step, "num_params": num_params,
            "stopped_early": bool(stop.get("early")), **test,
            "wall_time_s": run_seconds(), "seed": config.seed,
            "config_hash": hashlib.sha256(config_json.encode()).hexdigest()[:16],
            "git_commit": _git_commit(), "heatmaps": heatmap_dir}
  if is_main:
    _write_json(os.path.join(workdir, "result.json"), result)
  return result
