"""`<root>/sweep.json`: which sweep a root holds, and each trial's status and files.

Status: pending, running, done, failed (exit code and the last log lines
kept), interrupted (stopped; a rerun resumes it from its checkpoints) and
submitted (queued on SLURM). Written atomically after every change.
"""
from __future__ import annotations

import datetime
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


def now() -> str:
  return datetime.datetime.now().isoformat(timespec="seconds")


class Manifest:
  """The manifest of the sweep `config_spec`:`sweep` under `root`, created or reopened."""

  def __init__(self, root: str, config_spec: str, sweep: str):
    self.path = os.path.join(root, FILENAME)
    self._lock = threading.Lock()
    if os.path.exists(self.path):
      with open(self.path) as f:
        self.data = json.load(f)
      held = (self.data["config"], self.data["sweep"])
      if held != (config_spec, sweep):
        raise ValueError(f"{root} holds the sweep {held[0]} --sweep={held[1]} (see {self.path}); "
                         f"use another --root for {config_spec} --sweep={sweep}")
    else:
      self.data = {"config": config_spec, "sweep": sweep, "created": now(), "trials": {}}

  @property
  def trials(self) -> dict[str, dict[str, Any]]:
    return self.data["trials"]

  def update(self, name: str, **fields) -> None:
    """Set fields of trial `name` (created if new) and save."""
    with self._lock:
      self.trials.setdefault(name, {}).update(fields)
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
