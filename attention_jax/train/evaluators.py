"""The evaluators named in `config.evals`: teacher-forced metrics, decoding, scores, heatmaps.

Each evaluator reads one split (or a seeded random sample of it, never its
first records), sums the task's teacher-forced loss over it, decodes it when
its scorers need the outputs, and returns the task's metrics. Periodic ones
run every `every` steps; `every=0` runs once at the end, with the best step's
parameters when `use_best`.
"""
from __future__ import annotations

import json
import os
import time

import jax
from jax.experimental import multihost_utils
import numpy as np

from attention_jax.data import paths
from attention_jax.evaluate import metrics as metrics_lib
from attention_jax.train import partition
from attention_jax.viz import heatmaps

# A line this often while one evaluation runs (a whole test split, a teacher decoding
# train): how far it is. A shorter evaluation prints none.
PROGRESS_EVERY_S = 60.0


def sample_indices(size: int, examples: int, seed: int) -> np.ndarray | None:
  """`examples` distinct record indices of `size`, drawn uniformly with `seed` and sorted
  (the same for a seed, on every process); None for the whole split."""
  if not examples or examples >= size:
    return None
  return np.sort(np.random.default_rng(seed).choice(size, examples, replace=False))


class Evaluator:
  """One entry of `config.evals`, bound to a task, a mesh and a jitted eval step."""

  def __init__(self, name: str, cfg, task, mesh, eval_step, batch_size: int, out):
    self.name, self.cfg, self.task, self.mesh = name, cfg, task, mesh
    self.eval_step, self.batch_size, self.out = eval_step, batch_size, out
    self.indices = sample_indices(task.num_examples(cfg.split), cfg.examples, cfg.sample_seed)
    self.decodes = cfg.decode != "none"
    self.max_len = decode_budget(task, cfg, name) if self.decodes else 0
    self.heatmap_dir = None  # of the last run, when it drew any

  def due(self, step: int, last: int) -> bool:
    every = self.cfg.every
    return bool(every) and not self.cfg.use_best and (step % every == 0 or step == last)

  def _count(self) -> tuple[int, int]:
    """(examples this evaluator reads, the split's size)."""
    size = self.task.num_examples(self.cfg.split)
    return (size if self.indices is None else len(self.indices)), size

  def describe(self) -> str:
    n, size = self._count()
    what = f"{n} of {size} ({'all' if self.indices is None else f'seed {self.cfg.sample_seed}'})"
    decoding = f", {self.cfg.decode} up to {self.max_len} tokens" if self.decodes else ""
    return f"eval {self.name}: {self.cfg.split}, {what}{decoding}"

  def run(self, params, step: int) -> dict[str, float]:
    """The metrics at `step`; prints, draws and writes predictions as configured."""
    sums, predictions, examples, first = None, [], [], None
    scored = bool(self.cfg.metrics) or self.cfg.predictions
    batches = self.task.batches(self.cfg.split, batch_size=self.batch_size, indices=self.indices)
    start = last_line = time.perf_counter()
    done = 0
    for i, batch in enumerate(batches):
      first = batch if first is None else first
      if time.perf_counter() - last_line >= PROGRESS_EVERY_S:
        last_line = time.perf_counter()
        self.out.progress.write(f"  eval {self.name}: {done} of {self._count()[0]} examples, "
                                f"{last_line - start:.0f} s")
      done += int(np.sum(np.asarray(batch["index"]) >= 0))
      with partition.activate(self.mesh):
        sharded = partition.shard_batch(batch, self.mesh)
        out = self.eval_step(params, sharded)  # stays on the device until the end
        sums = out if sums is None else jax.tree.map(lambda a, b: a + b, sums, out)
        if self.decodes and (scored or (i == 0 and self.cfg.show)):
          self._decode(params, sharded, step, predictions, examples)
    metrics = self.task.finish({k: float(v) for k, v in jax.device_get(sums).items()})
    if self.cfg.metrics and self.decodes:
      metrics.update(self.task.score(predictions, examples, self.cfg.metrics))
    self._report(params, step, first, predictions, examples)
    return metrics

  def _decode(self, params, sharded: dict, step: int, predictions: list, examples: list):
    cfg = self.cfg
    ids = self.task.predict(params, sharded, method=cfg.decode, max_len=self.max_len,
                            beam_size=cfg.beam_size, alpha=cfg.beam_alpha,
                            temperature=cfg.temperature, prompt_len=cfg.prompt_len,
                            rng=jax.random.fold_in(jax.random.key(cfg.sample_seed), step))
    # Every process gets the whole global batch, so all score the same examples.
    ids, batch = multihost_utils.process_allgather((ids, sharded), tiled=True)
    real = np.asarray(batch["index"]) >= 0
    predictions.extend(self.task.text(row) for row in ids[real])
    examples.extend(self.task.examples(cfg.split, batch, prompt_len=cfg.prompt_len))

  def _report(self, params, step: int, first, predictions: list, examples: list):
    for example, prediction in list(zip(examples, predictions))[:self.cfg.show]:
      self.out.progress.write("  " + self.task.show(example, prediction))
    if self.cfg.predictions and self.out.is_main:
      text = "".join(json.dumps(self.task.record(e, p)) + "\n"
                     for e, p in zip(examples, predictions))
      path = os.path.join(self.out.workdir, f"predictions_{self.name}.jsonl")
      paths.atomic_write_bytes(path, text.encode())
    self.heatmap_dir = None
    if self.cfg.heatmaps and first is not None:
      self.heatmap_dir = self._draw(params, step, first)

  def _draw(self, params, step: int, batch: dict) -> str | None:
    """Heatmaps of the first batch's first rows under `<workdir>/attention/step_<step>/`
    and in TensorBoard; the directory, or None when the model has nothing to draw."""
    # A collective: params may span other processes' devices. Only process 0 draws.
    params = multihost_utils.process_allgather(params, tiled=True)
    if not self.out.is_main:
      return None
    figures = self.task.heatmap_figures(params, batch, self.cfg.heatmaps, step)
    out_dir = os.path.join(self.out.workdir, "attention", f"step_{step}")
    for stem, fig in figures.items():
      rgba = heatmaps.figure_to_rgba(fig)
      heatmaps.save_png(rgba, os.path.join(out_dir, f"{stem}.png"))
      self.out.writer.image(step, f"attention/{stem}", rgba)
    return out_dir if figures else None


def decode_budget(task, cfg, name: str = "dev") -> int:
  """Evaluator `name`'s `max_len`, else the task's default; a ValueError naming both
  lengths when it is longer than the model can decode."""
  prompt = cfg.prompt_len if task.prompted else 0
  if cfg.max_len:
    what = f"evals.{name}.prompt_len + max_len" if prompt else f"evals.{name}.max_len"
    task.check_decode_len(cfg.max_len + prompt, what)
    return cfg.max_len
  return task.default_decode_len(cfg.split, prompt)


def check(name: str, cfg, task, splits) -> None:
  """Every evaluator value that needs no data; a ValueError naming `evals.<name>.<key>`."""
  key = f"evals.{name}"
  if cfg.split not in splits:
    raise ValueError(f"{key}.split={cfg.split!r} is not a split; known: {', '.join(splits)}")
  if cfg.decode not in (*task.decodes, "none"):
    raise ValueError(f"{key}.decode={cfg.decode!r} is unknown for task {task.name!r}; known: "
                     f"{', '.join((*task.decodes, 'none'))}")
  for field, low in (("every", 0), ("examples", 0), ("max_len", 0), ("beam_size", 1),
                     ("heatmaps", 0), ("show", 0), ("prompt_len", 1)):
    if cfg[field] < low:
      raise ValueError(f"{key}.{field} must be at least {low}, got {cfg[field]}")
  if cfg.temperature <= 0:
    raise ValueError(f"{key}.temperature must be positive, got {cfg.temperature}")
  try:
    task.metric_names(cfg.metrics)
  except ValueError as e:
    raise ValueError(f"{key}.metrics={cfg.metrics!r}: {e}") from None
  for metric in task.metric_names(cfg.metrics):
    metrics_lib.higher_is_better(metric)  # every reported metric has a direction
