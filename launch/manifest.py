"""`<root>/sweep.json`: which sweep a root holds, and each trial's status and files.

Status: pending, running, done, failed (exit code and the last log lines
kept), interrupted (stopped; a rerun resumes it from its checkpoints), busy
(its workdir was held by another process; a rerun starts it once free),
submitted (queued on SLURM) and, in a search, pruned (stopped early by the
pruner; never resumed). `experiment` records the experiment file's sha256 and
its published references when the sweep starts, so a report never imports the
file; a search's root also records `search` ('optuna') and `study` (objective,
direction, pruner, journal). Written atomically after every change.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import threading
from typing import Any

from attention_jax.data import paths

FILENAME = "sweep.json"


def config_label(overrides: dict[str, Any]) -> str:
  """A trial's configuration, its seeds pooled: 'attention=luong,score=dot' (or 'default')."""
  return ",".join(f"{k}={v}" for k, v in overrides.items() if k != "seed") or "default"


def in_sweep_order(trials: dict[str, dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
  """A manifest's (name, record) pairs in the sweep's order (the file keeps them sorted by name)."""
  return sorted(trials.items(), key=lambda t: (t[1].get("index", 0), t[0]))


def describe(config_spec: str, sweep: str, search: str | None) -> str:
  """'sweep x.py --sweep=small' or 'search x.py --search=optuna': what a root holds."""
  return f"search {config_spec} --search={search}" if search else (
      f"sweep {config_spec} --sweep={sweep}")


def now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


class Manifest:
  """The manifest of the sweep `config_spec`:`sweep` under `root`, created or reopened."""

  def __init__(self, root: str, config_spec: str, sweep: str, search: str | None = None):
    self.path = os.path.join(root, FILENAME)
    self._lock = threading.Lock()
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.data = json.load(f)
      held = (self.data["config"], self.data["sweep"], self.data.get("search"))
      if held != (config_spec, sweep, search):
        raise ValueError(f"{root} holds the {describe(*held)} (see {self.path}); "
                         f"use another --root for {describe(config_spec, sweep, search)}")
    else:
      self.data = {"config": config_spec, "sweep": sweep, "created": now(), "trials": {}}
      if search:
        self.data["search"] = search

  @property
  def trials(self) -> dict[str, dict[str, Any]]:
    return self.data["trials"]

  def update(self, name: str, **fields) -> None:
    """Set fields of trial `name` (created if new) and save."""
    with self._lock:
      self.trials.setdefault(name, {}).update(fields)
      self._save()

  def set(self, **fields) -> None:
    """Set top-level fields (not trials) and save."""
    with self._lock:
      self.data.update(fields)
      self._save()

  def _save(self) -> None:
    self.data["updated"] = now()
    text = json.dumps(self.data, indent=2, sort_keys=True) + "\n"
    paths.atomic_write_bytes(self.path, text.encode())

  def counts(self, names) -> dict[str, int]:
    """How many of `names` are done / running / failed / left (anything else)."""
    out = {"done": 0, "running": 0, "failed": 0, "left": 0}
    for name in names:
      status = self.trials.get(name, {}).get("status")
      out[status if status in ("done", "running", "failed") else "left"] += 1
    return out


@contextlib.contextmanager
def _root_lock(root: str):
  """Runs of one root may be started side by side: one updates its sweep.json at a time."""
  os.makedirs(root, exist_ok=True)
  with open(os.path.join(root, ".register.lock"), "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    yield


def register_run(workdir: str, config_spec: str, sweep: str, **fields) -> None:
  """Records a run that is not a sweep's trial (a peer system, an ensemble) as a trial of
  its parent dir's sweep.json (created on first use, with no published references), so
  `launch.report --root=<parent>` tables it. A ValueError if the root holds another kind."""
  root, name = os.path.split(workdir)
  with _root_lock(root):
    manifest = Manifest(root, config_spec, sweep)
    if "experiment" not in manifest.data:
      manifest.set(experiment={"file": config_spec, "references": []})
    index = manifest.trials.get(name, {}).get("index", len(manifest.trials))
    manifest.update(name, index=index, workdir=workdir, log=os.path.join(workdir, "log.txt"),
                    result=os.path.join(workdir, "result.json"), **fields)
