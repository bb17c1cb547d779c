"""Checks that a data dir is usable and a prepared data set is whole, and the build lock.

A prepared data set is `<root>/<name>/<config>/<version>/`: dataset_info.json,
the array_record shards of each split and (ours) the vocabulary files. Every
fault found here is one `DataError` line naming the file and the fix, raised
before training starts, so the CLI exits with code 2 and writes nothing.

`check_shards` opens each shard's footer and compares its record count with
dataset_info.json: about 10-25 ms for CMUdict's 20 MB (reading every record
would take 0.6 s). It finds missing, empty, truncated and swapped shards;
damage inside a shard shows only when its records are read, where
`registry.RecordSource` raises `DamagedDataError` naming the shard.

Builds run under a file lock beside the version dir, so two processes never
build the same data set at once; the holder removes `incomplete.*` dirs that an
interrupted build (killed `prepare`) left behind, since no build can be using them.
"""
import contextlib
import fcntl
import glob
import json
import os
import shutil
import sys
import tempfile

from array_record.python import array_record_module

from attention_jax.data.errors import DamagedDataError, DataError, damaged, first_line

INFO_FILES = ("dataset_info.json", "metadata.json")  # the JSON files TFDS reads when opening


def rebuild_hint(name: str, root: str) -> str:
  """The command that rebuilds data set `name` in data dir `root`."""
  return f"rerun `python -m attention_jax.data.prepare {name} --force --data_dir {root}`"


def check_root(root: str) -> None:
  """Raises DataError when the data dir (or a folder above it) is not a directory."""
  path = root
  while path and not os.path.exists(path):
    path = os.path.dirname(path) if os.path.dirname(path) != path else ""
  if path and not os.path.isdir(path):
    where = f"Data dir {root}" if path == root else f"Data dir {root}: {path}"
    raise DataError(f"{where} is a file, not a directory; set config.data.data_dir or "
                    "$ATTENTION_JAX_DATA_DIR to a directory.")


def ensure_writable(root: str, name: str) -> None:
  """Creates the data dir if needed and checks that `name` can be built in it."""
  check_root(root)
  try:
    os.makedirs(root, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write_test.", dir=root)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise DataError(f"Cannot build {name} in data dir {root} ({e.strerror}); make it writable "
                    "or set config.data.data_dir or $ATTENTION_JAX_DATA_DIR to a writable "
                    "directory.") from None


def check_info_files(version_dir: str, hint: str) -> None:
  """Raises DamagedDataError naming the first unreadable JSON file TFDS would read."""
  for name in INFO_FILES:
    path = os.path.join(version_dir, name)
    if not os.path.exists(path):
      continue
    try:
      with open(path, encoding="utf-8") as f:
        json.load(f)
    except (OSError, ValueError) as e:
      raise damaged(path, e, hint) from None


def check_shards(builder, hint: str) -> None:
  """Raises DamagedDataError for the first missing, empty or truncated array_record shard."""
  if builder.info.file_format is None or builder.info.file_format.value != "array_record":
    return  # only array_record data sets can be read here at all
  for split in builder.info.splits.values():
    for path, expected in zip(split.filepaths, split.shard_lengths):
      check_shard(os.fspath(path), expected, hint)


def check_shard(path: str, expected: int, hint: str) -> None:
  if not os.path.exists(path):
    raise DamagedDataError(f"{path} is missing; {hint}")
  if os.path.getsize(path) == 0:
    raise DamagedDataError(f"{path} is empty (0 bytes); {hint}")
  try:
    reader = array_record_module.ArrayRecordReader(path)
    count = reader.num_records()
    reader.close()
  except (RuntimeError, OSError, ValueError) as e:
    raise DamagedDataError(f"{path} is truncated or damaged ({first_line(e)}); {hint}") from None
  if count != expected:
    raise DamagedDataError(f"{path} has {count} records where dataset_info.json says "
                           f"{expected}; {hint}")


def _lock_path(version_dir: str) -> tuple[str, str, str]:
  """(parent dir, version, lock file) of a version dir."""
  parent, version = os.path.split(os.path.normpath(version_dir))
  return parent, version, os.path.join(parent, f".{version}.lock")


@contextlib.contextmanager
def build_lock(version_dir: str):
  """Holds an exclusive lock for building `version_dir`; removes stale incomplete dirs."""
  parent, version, lock_path = _lock_path(version_dir)
  os.makedirs(parent, exist_ok=True)
  with open(lock_path, "a", encoding="utf-8") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      print(f"waiting for another process building {version_dir}", file=sys.stderr, flush=True)
      fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      remove_stale(parent, version)
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def clean_stale(version_dir: str) -> None:
  """Removes stale incomplete dirs beside a prepared data set, when no build holds the lock."""
  parent, version, lock_path = _lock_path(version_dir)
  if not glob.glob(os.path.join(glob.escape(parent), f"incomplete.*_{glob.escape(version)}")):
    return
  try:
    with open(lock_path, "a", encoding="utf-8") as lock:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
      try:
        remove_stale(parent, version)
      finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
  except OSError:
    pass  # a build is running (it cleans up itself) or the data dir is read-only


def remove_stale(parent: str, version: str) -> None:
  """Deletes `incomplete.*_<version>` dirs: left by a killed build (the caller holds the lock)."""
  for path in glob.glob(os.path.join(glob.escape(parent), f"incomplete.*_{glob.escape(version)}")):
    print(f"removing {path}, left by an interrupted build", file=sys.stderr, flush=True)
    shutil.rmtree(path, ignore_errors=True)
