"""What a run has done so far: its evaluations (best step, patience) and its wall and CPU
time, read back from `metrics.jsonl` on resume; the run's JSON files."""
from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import NamedTuple

from attention_jax.data import paths
from attention_jax.evaluate import metrics as metrics_lib
from attention_jax.train import provenance as provenance_lib


class HistoryError(ValueError):
  """metrics.jsonl cannot be read back; the message is one line."""


class Spent(NamedTuple):
  """Seconds a run spent before this attempt: wall clock, and CPU over all its threads
  (None: an attempt before CPU time was recorded, so the run's total is unknown)."""
  wall_s: float = 0.0
  cpu_s: float | None = 0.0


def history(workdir: str, step: int, split: str,
            repair: bool = True) -> tuple[list[tuple[int, dict]], Spent]:
  """What metrics.jsonl holds up to `step`, for a resumed run: the records of evaluator
  `split` (for the best step and patience) and the seconds spent up to `step` (the last
  train record's elapsed_s and cpu_s; work after the checkpoint that a killed attempt did
  not save is not counted; cpu_s is None in records written before it was logged).

  A torn last line (a write cut short) is dropped with a warning and, with `repair`, cut
  from the file so the next record starts on a line of its own. A damaged line elsewhere,
  or a missing file when resuming from a checkpoint, raises HistoryError: the best step
  and patience would silently change, and the evaluations of deleted checkpoints cannot
  be rebuilt, so the run refuses rather than guess."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    if step:
      raise HistoryError(
          f"{path} is missing but the checkpoints resume at step {step}: the best step and "
          "early stopping depend on it; restore it, or move the workdir aside to start over")
    return [], Spent()
  rows = _records(path, repair)  # also at step 0: the next append must start a new line
  if not step:
    return [], Spent()
  evals, spent = {}, Spent()
  for row in rows:
    if row["step"] > step:
      continue
    kind = row.pop("split")
    if kind == split:
      evals[row.pop("step")] = row  # a step evaluated twice (killed, resumed): the last
    elif kind == "train" and "elapsed_s" in row:
      spent = Spent(row["elapsed_s"], row.get("cpu_s"))
  return sorted(evals.items()), spent


def _records(path: str, repair: bool) -> list[dict]:
  """The records of metrics.jsonl; drops (and with `repair` cuts) a torn last line."""
  with open(path, "rb") as f:
    lines = f.read().split(b"\n")
  ended = lines[-1] == b""  # the file ends with a newline
  if ended:
    lines.pop()
  rows = []
  for number, line in enumerate(lines, 1):
    try:
      rows.append(_record(line))
    except ValueError as e:
      if number < len(lines):
        raise HistoryError(f"{path}:{number}: damaged record ({e}); the file is damaged "
                           "before its last line: repair or delete that line") from None
      print(f"warning: {path}:{number}: dropped a torn last line ({e})", file=sys.stderr,
            flush=True)
      ended = False
      lines.pop()
  if not ended and repair:
    _end_after(path, lines)
  return rows


def _record(line: bytes) -> dict:
  """One metrics.jsonl line as a dict with `step` and `split`; ValueError otherwise."""
  try:
    row = json.loads(line)
  except (json.JSONDecodeError, UnicodeDecodeError):
    raise ValueError(f"not JSON: {line[:60]!r}") from None
  if not isinstance(row, dict) or not isinstance(row.get("step"), int) or "split" not in row:
    raise ValueError(f"not a record with step and split: {line[:60]!r}")
  return row


def _end_after(path: str, lines: list[bytes]) -> None:
  """Cuts the file after `lines` (its whole records) and ends it with a newline, in place:
  only the torn tail changes, and the MetricWriter appends to the same inode later."""
  keep = len(b"\n".join(lines))
  with open(path, "r+b") as f:
    f.truncate(keep)
    if lines:
      f.seek(keep)
      f.write(b"\n")


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


# Config keys added after runs were written, with the value that keeps such a run's meaning:
# a saved config without the key resumes under a config that holds it at this value.
ADDED_KEYS = {("optim", "ema_decay"): 0.0}


def same_config(saved: dict, new: dict) -> bool:
  """Whether a saved config.json (provenance dropped) holds the run `new` describes."""
  new = {section: dict(values) if isinstance(values, dict) else values
         for section, values in new.items()}
  for (section, key), off in ADDED_KEYS.items():
    if key not in saved.get(section, {}) and new.get(section, {}).get(key, off) == off:
      new.get(section, {}).pop(key, None)
  return saved == new


def prepare_workdir(workdir: str, config_json: str, write: bool,
                    provenance: dict | None = None) -> None:
  """Create the workdir; refuse one that holds a different run. A new run's config.json
  also records `provenance` (under `provenance.KEY`), which is not compared on resume."""
  try:
    os.makedirs(workdir, exist_ok=True)
    tempfile.NamedTemporaryFile(dir=workdir).close()
  except OSError as e:
    raise WorkdirError(f"workdir {workdir!r} is not writable: {e.strerror}") from None
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    saved.pop(provenance_lib.KEY, None)
    if not same_config(saved, json.loads(config_json)):
      raise WorkdirError(f"workdir {workdir!r} holds a run of another config "
                         f"(see {path}); use a new --workdir")
  elif write:
    write_json(path, {**json.loads(config_json), provenance_lib.KEY: provenance})
