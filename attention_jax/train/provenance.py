"""What produced a run: library versions, platform and devices, XLA flags, the git commit
(and whether the tree had uncommitted changes), and a hash of the data set's split files.

Written into `config.json` (the first attempt, under `_provenance`) and `result.json` (the
attempt that finished, under `provenance`); `launch.report` warns when the rows of one
table disagree on versions or data.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain",
            "tensorflow-datasets", "ml-collections", "numpy")
KEY = "_provenance"  # its key in config.json, beside the config's own sections
# Makes XLA's GPU reductions and scatters deterministic (slower); CPU XLA is deterministic
# already and accepts the flag as a no-op.
DETERMINISTIC_FLAGS = ("--xla_gpu_deterministic_ops=true",)


def versions() -> dict[str, str | None]:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def git_state() -> dict[str, object]:
  """{'commit': sha or None, 'dirty': whether tracked or untracked files differ}."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=here, check=True).stdout.strip()
    status = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                            cwd=here, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return {"commit": None, "dirty": None}
  return {"commit": commit, "dirty": bool(status.strip())}


def data_hash(dataset) -> str | None:
  """sha256 over every split's record files (names and bytes, in split then shard order);
  None for a data set without files (one generated in memory)."""
  builder = getattr(dataset, "builder", None)
  if builder is None:
    return None
  digest = hashlib.sha256()
  for split_name, split in sorted(builder.info.splits.items()):
    for path in split.filepaths:
      digest.update(f"{split_name}/{os.path.basename(os.fspath(path))}\0".encode())
      with open(os.fspath(path), "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          digest.update(block)
  return digest.hexdigest()


def collect(dataset) -> dict:
  """This process's provenance for a run on `dataset`."""
  import jax  # pylint: disable=g-import-not-at-top  # here: launch.report reads rows without JAX
  devices = jax.devices()
  return {"versions": versions(), "platform": jax.default_backend(),
          "device_kind": devices[0].device_kind, "device_count": len(devices),
          "process_count": jax.process_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "git": git_state(), "data": {"name": getattr(dataset, "name", None),
                                       "sha256": data_hash(dataset)}}


def set_deterministic() -> None:
  """Adds DETERMINISTIC_FLAGS to $XLA_FLAGS; call before JAX starts its backend."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  os.environ["XLA_FLAGS"] = " ".join([*flags, *(f for f in DETERMINISTIC_FLAGS if f not in flags)])


def _fields(p: dict) -> dict[str, object]:
  """The values rows of one table should share, by label."""
  out = {f"{name} version": v for name, v in (p.get("versions") or {}).items()}
  out.update({"platform": p.get("platform"), "device kind": p.get("device_kind"),
              "data hash": (p.get("data") or {}).get("sha256")})
  return out


def mismatches(rows: dict[str, dict | None]) -> list[str]:
  """One warning per field (a library's version, platform, device kind, data hash) whose
  value differs between the named rows' provenance, and one naming rows without any."""
  missing = sorted(name for name, p in rows.items() if not p)
  warnings = [f"no provenance recorded for: {', '.join(missing)}"] if missing else []
  values: dict[str, dict[str, list[str]]] = {}  # label -> value -> row names
  for name, p in rows.items():
    for label, value in _fields(p or {}).items() if p else ():
      values.setdefault(label, {}).setdefault(str(value), []).append(name)
  for label, groups in values.items():
    if len(groups) > 1:
      parts = "; ".join(f"{value} ({', '.join(sorted(names))})" for value, names in groups.items())
      warnings.append(f"rows differ in {label}: {parts}")
  return warnings
