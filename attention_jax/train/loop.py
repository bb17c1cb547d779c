"""The training loop: validate, build, resume, train, evaluate, checkpoint, report.

Outputs in the workdir: `config.json`, `metrics.jsonl`, `tensorboard/`,
`checkpoints/`, `attention/step_<N>/*.png` and, at the end, `result.json`.
Rerunning the same command resumes from the latest checkpoint (data position
included) and reaches the same parameters as an uninterrupted run. Metrics
stay on the device between log steps: the loop syncs with the host only to
log, evaluate and checkpoint, and shards the next batch while a step runs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from attention_jax import data, tasks
from attention_jax.train import checkpoint, evaluators, history as history_lib
from attention_jax.train import metrics as metrics_lib, optim, partition, setup, validate
from attention_jax.train.validate import ConfigError


class NonFiniteError(RuntimeError):
  """Training produced a NaN or infinity."""


@dataclasses.dataclass
class Output:
  """Where a run writes and prints (process 0 alone does)."""
  workdir: str
  writer: metrics_lib.MetricWriter
  progress: metrics_lib.Progress
  is_main: bool


def open_data(config) -> data.Dataset:
  """The config's data set; in a multi-process run process 0 builds a missing one alone."""
  if jax.process_count() == 1:
    return data.from_config(config.data)
  dataset = data.from_config(config.data) if jax.process_index() == 0 else None
  multihost_utils.sync_global_devices("attention_jax: data ready")
  return dataset or data.from_config(config.data)


def train_and_evaluate(config, workdir: str) -> dict:
  """Runs (or resumes) the experiment; returns the contents of `result.json`."""
  start_time = time.perf_counter()
  validate.check_config(config)
  task = tasks.build_task(config, open_data(config))
  validate.check_with_data(config, task)
  config_json = config.to_json_best_effort(sort_keys=True)
  try:
    history_lib.prepare_workdir(workdir, config_json, write=jax.process_index() == 0)
  except history_lib.WorkdirError as e:
    raise ConfigError(str(e)) from None
  run = Run(config, workdir, task, start_time)
  if run.finished is not None:
    run.close()
    return run.finished
  try:
    run.train()
    result = run.finish(hashlib.sha256(config_json.encode()).hexdigest()[:16])
  finally:
    run.close()
  return result


class Window:
  """The train metrics of the steps since the last log: device arrays until `check`."""

  def __init__(self, step: int):
    self.first, self.entries, self.clock = step + 1, [], time.perf_counter()

  def check(self, where: str) -> None:
    """Fetches the window (the only host sync of training) and raises NonFiniteError
    naming the step range and `where` the last good checkpoint is."""
    self.entries = jax.device_get(self.entries)
    for i, metrics in enumerate(self.entries):
      bad = [k for k, v in metrics.items() if not np.isfinite(v)]
      if bad:
        last = self.first + len(self.entries) - 1
        raise NonFiniteError(
            f"non-finite {', '.join(bad)} between steps {self.first} and {last} (first at "
            f"step {self.first + i}, loss {float(metrics['loss'])}); {where}")

  def summary(self) -> dict[str, float]:
    """Means over the window's steps, the last learning rate, and throughput."""
    elapsed = max(time.perf_counter() - self.clock, 1e-9)
    out = {k: float(np.mean([m[k] for m in self.entries])) for k in self.entries[0]
           if k not in ("tokens", "learning_rate")}
    if "learning_rate" in self.entries[-1]:
      out["learning_rate"] = float(self.entries[-1]["learning_rate"])
    out["steps_per_s"] = len(self.entries) / elapsed
    out["tokens_per_s"] = float(sum(m["tokens"] for m in self.entries)) / elapsed
    return out

  def reset(self, step: int) -> None:
    self.__init__(step)

  def exclude(self, seconds: float) -> None:
    """Leave time spent outside training (evaluations) out of the throughput."""
    self.clock += seconds


class Run:
  """One training run: built from the config, resumed from the workdir, trained, finished."""

  def __init__(self, config, workdir: str, task, start_time: float):
    self.config, self.workdir, self.task, self.start_time = config, workdir, task, start_time
    self.is_main = jax.process_index() == 0
    self.mesh = partition.make_mesh(config.train.mesh_shape)
    tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
    local = config.data.batch_size // jax.process_count()
    self.rng = jax.random.key(config.seed)
    self.state, shardings = setup.create_state(task, tx, self.rng, local, self.mesh)
    self.train_iter = iter(task.batches("train", batch_size=local, seed=config.seed, train=True))
    self.ckpt = checkpoint.Checkpoints(workdir, config.train.checkpoint_every,
                                       config.train.keep_checkpoints)
    # The best eval step's state, for use_best evaluators (the test split) and early stopping.
    keep_best = config.train.early_stop_patience or any(e.use_best for e in config.evals.values())
    self.best_ckpt = checkpoint.Checkpoints(workdir, 0, keep=1, name="best") if keep_best else None
    self.out = None
    self.step, self.data_state, self.finished = self._resume()
    if self.finished is not None:
      return
    self.train_step, eval_step = setup.jit_steps(task, shardings, self.mesh, schedule=schedule)
    self.out = Output(workdir, metrics_lib.MetricWriter(workdir, enabled=self.is_main),
                      metrics_lib.Progress(self.step, config.train.steps, config.train.log_every,
                                           enabled=self.is_main), self.is_main)
    eval_batch = config.data.eval_batch_size // jax.process_count()
    self.evals = {name: evaluators.Evaluator(name, cfg, task, self.mesh, eval_step, eval_batch,
                                             self.out) for name, cfg in config.evals.items()}
    self.select, self.metric = config.train.select_eval, validate.selection_metric(config, task)
    self.history, self.elapsed_before = history_lib.history(workdir, self.step, self.select)
    self.last, self.heatmaps, self.stop = {}, None, None

  def _resume(self) -> tuple[int, dict | None, dict | None]:
    """(step, data state, the finished run's result.json or None) from the checkpoints."""
    if self.ckpt.latest_step() is None:
      return 0, None, None
    self.state, data_state, step = self.ckpt.restore(self.state)
    self.train_iter.set_state(data_state)
    if self.is_main:
      print(f"resumed from {self.workdir}/checkpoints at step {step}", flush=True)
    path = os.path.join(self.workdir, "result.json")
    if step >= self.config.train.steps and os.path.exists(path):
      if self.is_main:
        print(f"already finished: {path}", flush=True)
      with open(path) as f:
        return step, data_state, json.load(f)
    return step, data_state, None

  def seconds(self) -> float:
    """Wall time over every attempt of this run."""
    return self.elapsed_before + time.perf_counter() - self.start_time

  def _feed(self):
    """(sharded batch, the data position after it), one ahead of the step that takes it."""
    while True:
      batch = next(self.train_iter)
      yield partition.shard_batch(batch, self.mesh), self.train_iter.get_state()

  def train(self) -> None:
    """Steps until `train.steps`, early stopping or SIGTERM; saves the last step."""
    previous = signal.signal(signal.SIGTERM, lambda *_: setattr(self, "stop", "sigterm"))
    try:
      for ev in self.evals.values():
        self.out.progress.write(ev.describe())
      total, feed, window = self.config.train.steps, self._feed(), Window(self.step)
      upcoming = next(feed) if self.step < total else None
      while self.step < total and self.stop is None:
        batch, data_state = upcoming
        with partition.activate(self.mesh):
          self.state, metrics = self.train_step(self.state, batch, self.rng)
        if self.step + 1 < total:
          upcoming = next(feed)  # read and sharded while the step runs
        self.step, self.data_state = self.step + 1, data_state
        window.entries.append(metrics)
        self._after_step(window)
      # A SIGTERM can land mid-window: check its steps before saving them.
      window.check(f"the last good checkpoint is step {self.ckpt.latest_step()} in "
                   f"{self.workdir}/checkpoints")
      self.ckpt.save(self.step, self.state, self.data_state, force=True)
      self.ckpt.wait()
    finally:
      signal.signal(signal.SIGTERM, previous)

  def _after_step(self, window: Window) -> None:
    step, cfg = self.step, self.config.train
    due = [ev for ev in self.evals.values() if ev.due(step, cfg.steps)]
    saving = self.ckpt.due(step)
    logged = {}
    if due or saving or step % cfg.log_every == 0 or step == cfg.steps:
      window.check(f"the last good checkpoint is step {self.ckpt.latest_step()} in "
                   f"{self.workdir}/checkpoints")
    if step % cfg.log_every == 0 or step == cfg.steps:
      logged = dict(window.summary(), elapsed_s=self.seconds())
      self.out.writer.write(step, "train", logged)
      window.reset(step)
    self.out.progress.update(step, logged)
    started = time.perf_counter()
    for ev in due:
      self._evaluate(ev, self.state.params, step)
    window.exclude(time.perf_counter() - started)
    if saving:
      self.ckpt.save(step, self.state, self.data_state)

  def _evaluate(self, ev, params, step: int) -> dict:
    scores = ev.run(params, step)
    self.out.writer.write(step, ev.name, scores)
    self.out.progress.write(f"eval {ev.name} step {step}: "
                            + ", ".join(f"{k} {v:.4g}" for k, v in scores.items()))
    self.last[ev.name], self.heatmaps = scores, ev.heatmap_dir or self.heatmaps
    if ev.name == self.select and not ev.cfg.use_best:
      self.history.append((step, scores))
      if self.best_ckpt is not None and history_lib.best(self.history, self.metric)[0] == step:
        self.best_ckpt.save(step, self.state, self.data_state, force=True)
      patience = self.config.train.early_stop_patience
      if history_lib.patience_ran_out(self.history, self.metric, patience):
        self.out.progress.write(f"early stop at step {step}: no better {self.metric} in "
                                f"{patience} evaluations")
        self.stop = "early"
    return scores

  def _end_evaluation(self, ev) -> dict:
    """An `every=0` evaluator, with the best step's parameters when `use_best`."""
    params, step = self.state.params, self.step
    if ev.cfg.use_best and self.best_ckpt is not None and self.best_ckpt.latest_step() is not None:
      step = self.best_ckpt.latest_step()
      params = self.best_ckpt.restore(self.state)[0].params
    scores = self._evaluate(ev, params, step)
    return {ev.name: scores, f"{ev.name}_split": ev.cfg.split, f"{ev.name}_step": step}

  def finish(self, config_hash: str) -> dict:
    """Final evaluations and `result.json` (nothing after SIGTERM: the run resumes)."""
    if self.stop == "sigterm":
      print(f"SIGTERM: saved step {self.step} to {self.workdir}/checkpoints; rerun to resume",
            flush=True)
      return {}
    if not self.history:  # resumed at the last step before any evaluation was recorded
      self._evaluate(self.evals[self.select], self.state.params, self.step)
    ends = {}
    for ev in self.evals.values():
      if not ev.cfg.every or ev.cfg.use_best:
        ends.update(self._end_evaluation(ev))
    best_step, best = history_lib.best(self.history, self.metric)
    result = {"final": self.history[-1][1], "best": best, "best_step": best_step,
              "best_by": self.metric, "select_eval": self.select, "evals": self.last,
              "step": self.step, "stopped_early": self.stop == "early", **ends,
              "num_params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(self.state.params))),
              "wall_time_s": self.seconds(), "seed": self.config.seed,
              "config_hash": config_hash, "git_commit": history_lib.git_commit(),
              "heatmaps": self.heatmaps}
    if self.is_main:
      history_lib.write_json(os.path.join(self.workdir, "result.json"), result)
    return result

  def close(self) -> None:
    if self.out is not None:
      self.out.progress.close()
      self.out.writer.close()
    self.ckpt.close()
    if self.best_ckpt is not None:
      self.best_ckpt.close()
