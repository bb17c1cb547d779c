"""What a run has done so far: its evaluations (best step, patience) and its wall time,
read back from `metrics.jsonl` on resume; the run's JSON files."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile

from attention_jax.data import paths
from attention_jax.evaluate import metrics as metrics_lib


def history(workdir: str, step: int, split: str) -> tuple[list[tuple[int, dict]], float]:
  """What metrics.jsonl holds up to `step`, for a resumed run: the records of evaluator
  `split` (for the best step and patience) and the wall seconds spent up to `step` (the
  last train record's elapsed_s; work after the checkpoint that a killed attempt did not
  save is not counted)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not step or not os.path.exists(path):
    return [], 0.0
  evals, elapsed = {}, 0.0
  with open(path) as f:
    for line in f:
      row = json.loads(line)
      if row["step"] > step:
        continue
      kind = row.pop("split")
      if kind == split:
        evals[row.pop("step")] = row  # a step evaluated twice (killed, resumed): the last
      elif kind == "train" and "elapsed_s" in row:
        elapsed = row["elapsed_s"]
  return sorted(evals.items()), elapsed


def best(history: list[tuple[int, dict]], metric: str) -> tuple[int | None, dict]:
  """(step, scores) of the best evaluation by `metric`; the first of equals."""
  if not history:
    return None, {}
  top = history[0]
  for entry in history[1:]:
    if metrics_lib.better(metric, entry[1][metric], top[1][metric]):
      top = entry
  return top


def patience_ran_out(history: list[tuple[int, dict]], metric: str, patience: int) -> bool:
  """Whether `patience` evaluations (> 0) have passed since the best one."""
  if not patience or not history:
    return False
  best_step = best(history, metric)[0]
  return sum(1 for s, _ in history if s > best_step) >= patience


def write_json(path: str, value) -> None:
  text = json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
  paths.atomic_write_bytes(path, text.encode())


class WorkdirError(ValueError):
  """The workdir cannot hold this run."""


def prepare_workdir(workdir: str, config_json: str, write: bool) -> None:
  """Create the workdir; refuse one that holds a different run."""
  try:
    os.makedirs(workdir, exist_ok=True)
    tempfile.NamedTemporaryFile(dir=workdir).close()
  except OSError as e:
    raise WorkdirError(f"workdir {workdir!r} is not writable: {e.strerror}") from None
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      if json.load(f) != json.loads(config_json):
        raise WorkdirError(f"workdir {workdir!r} holds a run of another config "
                           f"(see {path}); use a new --workdir")
  elif write:
    write_json(path, json.loads(config_json))


def git_commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None
