"""The training loop: validate, build, resume, train, evaluate, checkpoint, report.

Outputs in the workdir: `config.json`, `metrics.jsonl`, `tensorboard/`,
`checkpoints/`, `attention/step_<N>/*.png` and, at the end, `result.json`.
Rerunning the same command resumes from the latest checkpoint (data position
included) and reaches the same parameters as an uninterrupted run. Metrics
stay on the device between log steps: the loop syncs with the host only to
log, evaluate and checkpoint, and shards the next batch while a step runs.
"""
from __future__ import annotations

import contextlib
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
from attention_jax.train import checkpoint, evaluators, history as history_lib, lock
from attention_jax.train import metrics as metrics_lib, optim, partition, provenance, setup
from attention_jax.train import validate
from attention_jax.train.validate import ConfigError


class RunError(RuntimeError):
  """A fault after training began (the CLI prints the message, exits with `exit_code`)."""
  exit_code = 1


class NonFiniteError(RunError):
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
  start = time.perf_counter(), time.process_time()  # wall, and CPU over all threads
  validate.check_config(config)
  task = tasks.build_task(config, open_data(config))
  validate.check_with_data(config, task)
  config_json = config.to_json_best_effort(sort_keys=True)
  is_main = jax.process_index() == 0
  # Reads every record (the data hash): a damaged shard stops the run before any write.
  prov = provenance.collect(task.dataset) if is_main else None
  # Process 0 of a run holds the lock for all of its processes (they share the workdir).
  try:
    with lock.hold(workdir, enabled=is_main):
      return _run(config, workdir, task, config_json, start, prov)
  except lock.LockError as e:
    raise ConfigError(str(e)) from None


def _run(config, workdir: str, task, config_json: str, start: tuple[float, float],
         prov: dict | None) -> dict:
  is_main = jax.process_index() == 0
  try:
    history_lib.prepare_workdir(workdir, config_json, write=is_main, provenance=prov)
  except history_lib.WorkdirError as e:
    raise ConfigError(str(e)) from None
  run = Run(config, workdir, task, start)
  if run.finished is not None:
    run.close()
    return run.finished
  try:
    run.train()
    result = run.finish(hashlib.sha256(config_json.encode()).hexdigest()[:16], prov)
  except data.DataError as e:  # a shard damaged inside: found only when its records are read
    _close_quietly(run)
    raise DataFault(f"{e}; {run.last_good()}: rerun to resume once the data is rebuilt") from None
  except BaseException:
    _close_quietly(run)
    raise
  run.close()
  return result


def _close_quietly(run: "Run") -> None:
  """Closes `run` while another error is on its way out: that error says more."""
  with contextlib.suppress(RunError):
    run.close()


class StorageError(RunError):
  """A checkpoint or metrics file cannot be read (damaged) or written (a full disk)."""


class DataFault(RunError):
  """The data set proved damaged after training began (exit 2, like any data fault)."""
  exit_code = 2


class Interrupted(RunError):
  """SIGINT (Ctrl-C): the run saved its last step; rerunning resumes it."""
  exit_code = 130


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

  def __init__(self, config, workdir: str, task, start: tuple[float, float]):
    self.config, self.workdir, self.task = config, workdir, task
    self.start_time, self.start_cpu = start
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
    self.select, self.metric = config.train.select_eval, validate.selection_metric(config, task)
    self.history, self.spent_before = self._history()  # before the writer appends to it
    self.train_step, eval_step = setup.jit_steps(task, shardings, self.mesh, schedule=schedule)
    self.out = Output(workdir, metrics_lib.MetricWriter(workdir, enabled=self.is_main),
                      metrics_lib.Progress(self.step, config.train.steps, config.train.log_every,
                                           enabled=self.is_main), self.is_main)
    eval_batch = config.data.eval_batch_size // jax.process_count()
    self.evals = {name: evaluators.Evaluator(name, cfg, task, self.mesh, eval_step, eval_batch,
                                             self.out) for name, cfg in config.evals.items()}
    self.last, self.heatmaps, self.stop = {}, None, None

  def _resume(self) -> tuple[int, dict | None, dict | None]:
    """(step, data state, the finished run's result.json or None) from the newest intact
    checkpoint (damaged newer ones are reported and set aside by `Checkpoints.restore`)."""
    if self.ckpt.latest_step() is None:
      return 0, None, None
    try:
      self.state, data_state, step = self.ckpt.restore(self.state,
                                                       accept=self.train_iter.set_state)
    except checkpoint.DamagedError as e:
      # Starting from step 0 would overwrite the damaged checkpoints: the user decides.
      raise self._abort(f"{e}; move {self.ckpt.directory} aside to start from step 0")
    if self.best_ckpt is not None:
      self.best_ckpt.drop_after(step)  # from steps the resumed run redoes
    if self.is_main:
      print(f"resumed from {self.workdir}/checkpoints at step {step}", flush=True)
    path = os.path.join(self.workdir, "result.json")
    if step >= self.config.train.steps and os.path.exists(path):
      if self.is_main:
        print(f"already finished: {path}", flush=True)
      with open(path) as f:
        return step, data_state, json.load(f)
    return step, data_state, None

  def _history(self) -> tuple[list[tuple[int, dict]], history_lib.Spent]:
    try:
      return history_lib.history(self.workdir, self.step, self.select, repair=self.is_main)
    except history_lib.HistoryError as e:
      raise self._abort(str(e))

  def _abort(self, message: str) -> StorageError:
    """A StorageError for a run that cannot start; closes what the constructor opened."""
    self.close()
    return StorageError(message)

  def seconds(self) -> float:
    """Wall time over every attempt of this run."""
    return self.spent_before.wall_s + time.perf_counter() - self.start_time

  def cpu_seconds(self) -> float | None:
    """CPU time of all the process' threads (XLA's, the input pipeline's) over every attempt:
    on a shared machine, what the run cost where wall time says how long it waited. None
    for a run resumed from attempts that did not record it."""
    if self.spent_before.cpu_s is None:
      return None
    return self.spent_before.cpu_s + time.process_time() - self.start_cpu

  def _feed(self):
    """(sharded batch, the data position after it), one ahead of the step that takes it."""
    while True:
      batch = next(self.train_iter)
      yield partition.shard_batch(batch, self.mesh), self.train_iter.get_state()

  def train(self) -> None:
    """Steps until `train.steps`, early stopping, SIGTERM or SIGINT; saves the last step.
    A failed write (a full disk) raises StorageError at the step it is noticed."""
    previous = {sig: signal.signal(sig, self._on_signal)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
      with self._storage_errors():
        self._train()
    finally:
      for sig, handler in previous.items():
        signal.signal(sig, handler)

  @contextlib.contextmanager
  def _storage_errors(self):
    """Turns a failed checkpoint write, or a full disk under any file, into one line."""
    try:
      yield
    except checkpoint.CheckpointError as e:
      raise StorageError(str(e)) from None
    except OSError as e:
      if not checkpoint.disk_full(e):
        raise
      raise StorageError(checkpoint.disk_full_error(e.filename or self.workdir,
                                                    self.last_good())) from None

  def _on_signal(self, signum, frame) -> None:
    """SIGTERM or SIGINT: stop after this step and save it; a second Ctrl-C stops now."""
    if signum == signal.SIGINT and self.stop in ("sigint", "sigterm"):
      raise KeyboardInterrupt
    self.stop = "sigint" if signum == signal.SIGINT else "sigterm"

  def last_good(self) -> str:
    return self.ckpt.last_good()

  def _train(self) -> None:
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
    # A signal can land mid-window: check its steps before saving them.
    window.check(self.last_good())
    self.ckpt.save(self.step, self.state, self.data_state, force=True)
    self.ckpt.wait()

  def _after_step(self, window: Window) -> None:
    step, cfg = self.step, self.config.train
    self.ckpt.poll()  # a background save that failed stops the run now, not saves later
    due = [ev for ev in self.evals.values() if ev.due(step, cfg.steps)]
    saving = self.ckpt.due(step)
    logged = {}
    if due or saving or step % cfg.log_every == 0 or step == cfg.steps:
      window.check(self.last_good())
    if step % cfg.log_every == 0 or step == cfg.steps:
      logged = dict(window.summary(), elapsed_s=self.seconds())
      cpu = self.cpu_seconds()
      if cpu is not None:
        logged["cpu_s"] = cpu
      self.out.writer.write(step, "train", logged)
      window.reset(step)
    self.out.progress.update(step, logged)
    started = time.perf_counter()
    for ev in due:
      self._evaluate(ev, optim.eval_params(self.state), step)
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
    params, step = optim.eval_params(self.state), self.step
    if ev.cfg.use_best and self.best_ckpt is not None and self.best_ckpt.latest_step() is not None:
      self.best_ckpt.wait()
      try:
        best, _, step = self.best_ckpt.restore(self.state)
      except checkpoint.DamagedError as e:
        raise StorageError(f"{e}; move {self.best_ckpt.directory} aside to score the last "
                           "step instead") from None
      params = optim.eval_params(best)
    scores = self._evaluate(ev, params, step)
    return {ev.name: scores, f"{ev.name}_split": ev.cfg.split, f"{ev.name}_step": step}

  def finish(self, config_hash: str, prov: dict | None) -> dict:
    """Final evaluations and `result.json` (nothing after SIGTERM or SIGINT: the run
    resumes; SIGINT raises Interrupted so the command exits 130)."""
    if self.stop in ("sigterm", "sigint"):
      saved = (f"{self.stop.upper()}: saved step {self.step} to {self.workdir}/checkpoints; "
               "rerun to resume")
      if self.stop == "sigint":
        raise Interrupted(saved)
      print(saved, flush=True)
      return {}
    with self._storage_errors():
      return self._final_result(config_hash, prov)

  def _final_result(self, config_hash: str, prov: dict | None) -> dict:
    if not self.history:  # resumed at the last step before any evaluation was recorded
      self._evaluate(self.evals[self.select], optim.eval_params(self.state), self.step)
    ends = {}
    for ev in self.evals.values():
      if not ev.cfg.every or ev.cfg.use_best:
        ends.update(self._end_evaluation(ev))
    best_step, best = history_lib.best(self.history, self.metric)
    result = {"final": self.history[-1][1], "best": best, "best_step": best_step,
              "best_by": self.metric, "select_eval": self.select, "evals": self.last,
              "step": self.step, "stopped_early": self.stop == "early", **ends,
              "num_params": int(sum(np.prod(p.shape) for p in jax.tree.leaves(self.state.params))),
              "wall_time_s": self.seconds(), "cpu_time_s": self.cpu_seconds(),
              "seed": self.config.seed,
              "config_hash": config_hash, "git_commit": prov["git"]["commit"] if prov else None,
              "provenance": prov,
              "heatmaps": self.heatmaps}
    if self.is_main:
      history_lib.write_json(os.path.join(self.workdir, "result.json"), result)
    self.out.writer.hparams(self.config.to_dict(), {
        **{f"{kind}_{k}": v for kind in ("best", "final") for k, v in result[kind].items()},
        **{f"{name}_{k}": v for name in ends if isinstance(ends[name], dict)
           for k, v in ends[name].items()}})
    return result

  def close(self) -> None:
    """Closes the writers and checkpoints, each even if another fails; then raises the
    first failure as a one-line StorageError (a full disk while flushing)."""
    closers = [self.ckpt.close] + ([self.best_ckpt.close] if self.best_ckpt else [])
    if self.out is not None:
      closers = [self.out.progress.close, self.out.writer.close] + closers
      self.out = None
    errors = []
    for close in closers:
      try:
        close()
      except (checkpoint.CheckpointError, OSError) as e:
        errors.append(e)
    if errors:
      e = errors[0]
      if isinstance(e, OSError) and checkpoint.disk_full(e):
        raise StorageError(checkpoint.disk_full_error(e.filename, self.last_good()))
      raise StorageError(str(e) if isinstance(e, checkpoint.CheckpointError)
                         else f"{e.filename}: {e.strerror}")
