"""A sweep's finished trials kept where version control can hold them (`--keep=DIR`).

A sweep's root holds checkpoints, too big to commit, and a machine may be handed back
without its files. The report reads only each trial's `result.json` and `metrics.jsonl`
(tens of kB with `config.json`), so a sweep run with `--keep` copies those files of every
trial that finishes to `DIR/<trial>/` and, before it starts, copies kept trials into a
root that lacks them: commit DIR, and the same command on a fresh clone runs only the rest.
"""
from __future__ import annotations

import os
import shutil

# result.json last: it is what marks a trial finished, so a copy cut short is rerun.
FILES = ("config.json", "metrics.jsonl", "result.json")


def _copy(src_dir: str, dst_dir: str) -> None:
  os.makedirs(dst_dir, exist_ok=True)
  for name in FILES:
    tmp = os.path.join(dst_dir, f".{name}.tmp")
    shutil.copyfile(os.path.join(src_dir, name), tmp)
    os.replace(tmp, os.path.join(dst_dir, name))


def _complete(trial_dir: str) -> bool:
  return all(os.path.isfile(os.path.join(trial_dir, name)) for name in FILES)


def save(keep: str, root: str, name: str) -> None:
  """Copies a finished trial's files from the root to the keep directory, unless kept."""
  if not _complete(os.path.join(keep, name)):
    _copy(os.path.join(root, name), os.path.join(keep, name))


def restore(keep: str, root: str, names) -> list[str]:
  """Copies each kept trial into the root where the root has no run of it at all; the
  names restored. A trial with files of its own in the root (say a run still under way)
  is left alone: its own run decides."""
  restored = []
  for name in names:
    src, dst = os.path.join(keep, name), os.path.join(root, name)
    if not _complete(src):
      continue
    if any(os.path.exists(os.path.join(dst, f)) for f in (*FILES, "checkpoints")):
      continue
    _copy(src, dst)
    restored.append(name)
  return restored
