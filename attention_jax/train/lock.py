"""An exclusive lock on a directory (a trainer's workdir, a sweep's root) for the life of a
process.

`fcntl.flock` on `<dir>/.lock`: the kernel drops the lock when its holder dies, however it
dies, so a stale lock of a dead process is no lock at all and the next run takes it over
without guessing from PIDs. The file holds the holder's PID and host only to name it in
the refusal. Standard library only: the sweep tools import it without JAX.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket

LOCK_NAME = ".lock"


class LockError(ValueError):
  """The directory is held by another live process (or cannot be locked)."""


def holder(directory: str) -> str:
  """'PID <n> on <host>' as the holder wrote it, or 'unknown process'."""
  try:
    with open(os.path.join(directory, LOCK_NAME)) as f:
      pid, host = f.read().split()[:2]
    return f"PID {pid} on {host}"
  except (OSError, ValueError):
    return "an unknown process"


def held_by(directory: str) -> str | None:
  """'PID <n> on <host>' while a live process holds `directory`'s lock, else None.

  Probes with a shared flock, dropped at once: it fails exactly while someone holds the
  exclusive one, and it writes nothing (taking the lock would overwrite the holder's name).
  """
  try:
    fd = os.open(os.path.join(directory, LOCK_NAME), os.O_RDONLY)
  except OSError:
    return None  # no lock file: nobody ever held it
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
  except BlockingIOError:
    return holder(directory)
  except OSError:
    return None  # no locks on this filesystem: the trainer's own lock decides
  finally:
    os.close(fd)  # also drops the shared lock
  return None


@contextlib.contextmanager
def hold(directory: str, what: str = "workdir", enabled: bool = True):
  """Holds `<directory>/.lock` (creating the directory) until the block exits; raises
  LockError naming the holder when another process has it."""
  if not enabled:
    yield
    return
  path = os.path.join(directory, LOCK_NAME)
  try:
    os.makedirs(directory, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise LockError(f"{what} {directory!r} is not writable: {e.strerror}") from None
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise LockError(f"{what} {directory!r} is in use by {holder(directory)} (lock file "
                      f"{path}); wait for it to end or stop it") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
    yield
  finally:
    os.close(fd)  # releases the lock; the file stays (deleting it would race a new holder)
