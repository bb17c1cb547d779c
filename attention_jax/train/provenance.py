"""What produced a run: library versions, platform and devices, XLA flags, the git commit
(and whether the tree had uncommitted changes), and a hash of the data set's records.

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
  """sha256 over every split's records (split and shard names, then each record in file
  order); None for a data set without files (one generated in memory). Reading every record,
  it finds a damaged shard before a run writes anything (DamagedDataError). A record counts by
  its content: TFDS serialises an example's features in no fixed order, so the same data
  prepared twice differs in its bytes (checked: the standard CMUdict split's files differ
  between two builds, their decoded examples do not)."""
  builder = getattr(dataset, "builder", None)
  if builder is None:
    return None
  digest = hashlib.sha256()
  for split_name, split in sorted(builder.info.splits.items()):
    for path in map(os.fspath, split.filepaths):
      digest.update(f"{split_name}/{os.path.basename(path)}\0".encode())
      try:
        for record in _canonical_records(path):
          digest.update(hashlib.sha256(record).digest())
      except (RuntimeError, OSError) as e:  # array_record's error names no file
        # Here, not at the top: launch.report imports this module and not the data package.
        from attention_jax.data import errors  # pylint: disable=g-import-not-at-top
        raise errors.damaged(path, e, getattr(dataset, "fix", "rebuild the data set")) from None
  return digest.hexdigest()


def _canonical_records(path: str, block: int = 4096):
  """An array_record file's examples re-serialised with their features in key order."""
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.proto import tf_example_pb2  # pylint: disable=g-import-not-at-top
  reader = array_record_module.ArrayRecordReader(path)
  try:
    total = reader.num_records()
    for start in range(0, total, block):
      for record in reader.read(start, min(total, start + block)):
        yield tf_example_pb2.Example.FromString(record).SerializeToString(deterministic=True)
  finally:
    reader.close()


def data_record(dataset) -> dict:
  """The `data` entry of a run's provenance: the data set's name and its records' hash."""
  return {"name": getattr(dataset, "name", None), "records_sha256": data_hash(dataset)}


def collect(dataset) -> dict:
  """This process's provenance for a run on `dataset`."""
  import jax  # pylint: disable=g-import-not-at-top  # here: launch.report reads rows without JAX
  devices = jax.devices()
  return {"versions": versions(), "platform": jax.default_backend(),
          "device_kind": devices[0].device_kind, "device_count": len(devices),
          "process_count": jax.process_count(), "xla_flags": os.environ.get("XLA_FLAGS", ""),
          "git": git_state(), "data": data_record(dataset)}


def set_deterministic() -> None:
  """Adds DETERMINISTIC_FLAGS to $XLA_FLAGS; call before JAX starts its backend."""
  flags = os.environ.get("XLA_FLAGS", "").split()
  os.environ["XLA_FLAGS"] = " ".join([*flags, *(f for f in DETERMINISTIC_FLAGS if f not in flags)])


def _fields(p: dict) -> dict[str, object]:
  """The values rows of one table should share, by label."""
  out = {f"{name} version": v for name, v in (p.get("versions") or {}).items()}
  out.update({"platform": p.get("platform"), "device kind": p.get("device_kind")})
  # Runs before 2026-12-05 hashed the files' bytes ("sha256"), which differ between two
  # preparations of the same data: only the records' hash compares.
  records = (p.get("data") or {}).get("records_sha256")
  if records:
    out["data hash"] = records
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
