"""Orbax checkpoints in `<workdir>/checkpoints`: the train state and the data position.

A rerun of the same command restores the latest step, including the input
iterator's state, so it continues the exact batch sequence. Orbax writes
each step into a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoint intact.

Faults (docs/reliability.md):
* A checkpoint that does not restore (garbage in an array file, a truncated
  `_METADATA`, a corrupt data-iterator state) is reported in one warning line;
  the run falls back to the newest intact one and moves the damaged ones aside
  to `<step>.damaged` (kept as evidence; orbax ignores them, so the step can be
  saved again). If every checkpoint is damaged, `DamagedError`: nothing is
  moved and nothing restarts from step 0 over them.
* A checkpoint of another state structure than the config builds (another model or
  optimizer) is not damage: `StructureError` at once, nothing moved.
* A save that fails (a full disk) raises `WriteError` naming the checkpoint
  and the last good step, as soon as the background write fails.
"""
from __future__ import annotations

import asyncio
import errno
import glob
import logging
import os
import shutil
import sys
import time
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import orbax.checkpoint as ocp
from orbax.checkpoint._src import asyncio_utils

from attention_jax.data.errors import first_line


class CheckpointError(RuntimeError):
  """A checkpoint cannot be read or written; the message is one line."""


class DamagedError(CheckpointError):
  """No checkpoint in the directory restores."""


class StructureError(DamagedError):
  """A checkpoint holds another state than the config builds: the files are intact."""


# orbax's ValueError when the saved tree and the one asked for differ in structure.
_OTHER_STRUCTURE = "tree structures do not match"


class WriteError(CheckpointError):
  """A save failed."""


def disk_full_error(path: str, last_good: str) -> str:
  """The one line for a full disk under `path`, and what is kept."""
  return f"no space left on device while writing {path}; {last_good}"


def disk_full(e: BaseException | None) -> bool:
  """Whether `e` (or what caused it) is ENOSPC; tensorstore reports it as a ValueError."""
  while e is not None:
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    if "No space left on device" in str(e) or "os_error_code='28'" in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


class _QuietOrbax(logging.Filter):
  """Drops orbax's error logs (a traceback per background thread, hundreds of lines), and
  asyncio's about orbax's tasks: the same failures reach the caller as exceptions,
  reported in one line."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno < logging.ERROR:
      return True
    if record.name == "asyncio":  # "Task exception was never retrieved" of an orbax writer
      return f"{os.sep}orbax{os.sep}" not in record.getMessage()
    return f"{os.sep}orbax{os.sep}" not in record.pathname


_QUIET = _QuietOrbax()


def _run_draining(coro):
  """orbax's `_run_sync_via_new_loop`, except that when the coroutine fails (an array that
  does not read, a write to a full disk) the loop first lets its other reads and writes
  finish: closed at once, each of them reports to the closed loop with a traceback of its
  own (hundreds of lines)."""
  loop = asyncio.new_event_loop()
  try:
    asyncio.set_event_loop(loop)
    return loop.run_until_complete(coro)
  finally:
    pending = asyncio.all_tasks(loop)
    if pending:
      loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
    asyncio.set_event_loop(None)
    loop.close()


def _drain_failed_loops() -> None:
  """Makes orbax run its reads and writes with `_run_draining` (where it has the function
  this replaces; its behaviour is otherwise the same)."""
  if getattr(asyncio_utils, "_run_sync_via_new_loop", None) is not None:
    asyncio_utils._run_sync_via_new_loop = _run_draining  # pylint: disable=protected-access


def _warn(text: str) -> None:
  if jax.process_index() == 0:
    print(f"warning: {text}", file=sys.stderr, flush=True)


class Checkpoints:
  """Save every `every` steps (and when asked), keep the last `keep`."""

  def __init__(self, workdir: str, every: int, keep: int = 3, name: str = "checkpoints"):
    self.every = every
    self.directory = os.path.abspath(os.path.join(workdir, name))
    logging.getLogger("absl").addFilter(_QUIET)  # orbax logs through absl; added once
    # When several writers of one save fail (a full disk), orbax's gather retrieves the
    # first failure only; asyncio logs each other one with a traceback when it is freed.
    logging.getLogger("asyncio").addFilter(_QUIET)
    _drain_failed_loops()
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "data"))
    self.good = self.manager.latest_step()  # the newest step known to be on disk intact
    self.pending = None  # the step being written in the background

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def due(self, step: int) -> bool:
    """Whether `step` is one of the periodic saves."""
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """Save at multiples of `every`, or always with `force`; returns whether it saved.
    Raises WriteError for this save or the previous one (still in the background)."""
    if not force and not self.due(step):
      return False
    if self.manager.latest_step() == step:
      return False  # already saved (e.g. the final step is also a multiple of `every`)
    self._settle()
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
    except Exception as e:  # orbax and tensorstore raise ValueError, OSError, ...
      raise self._failed(step, e) from None
    self.pending = step
    return True

  def poll(self) -> None:
    """Raises WriteError as soon as a background save has failed (cheap: no waiting)."""
    if self.pending is not None and not self.manager.is_saving_in_progress():
      self._settle()

  def wait(self) -> None:
    """Block until background saves are on disk; WriteError if one failed."""
    self._settle()

  def _settle(self) -> None:
    """Waits for the pending save; it becomes the last good step, or a WriteError."""
    if self.pending is None:
      return
    step, self.pending = self.pending, None
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._failed(step, e) from None
    self.good = step

  def _failed(self, step: int, e: Exception) -> WriteError:
    """The one-line error for a failed save of `step`; removes its partial directory."""
    path = os.path.join(self.directory, str(step))
    try:  # a save that failed in its synchronous part may still have writers running
      self.manager.wait_until_finished()
    except Exception:  # the same failure again
      pass
    self._remove_partials()
    if disk_full(e):
      return WriteError(disk_full_error(path, self.last_good()))
    return WriteError(f"could not write {path} ({first_line(e)}); {self.last_good()}")

  def _remove_partials(self) -> None:
    """Deletes the temporary directories of failed saves, freeing the space they took.

    Writes that orbax stopped awaiting when the save failed can still land after a first
    removal and create the directory again, so removal repeats until it stays gone for
    50 ms (at most 2 s; only after a failure: with nothing to remove it returns at once).
    """
    if jax.process_index() != 0:
      return
    for _ in range(40):
      partials = glob.glob(os.path.join(self.directory, "*.orbax-checkpoint-tmp*"))
      if not partials:
        return
      for partial in partials:
        shutil.rmtree(partial, ignore_errors=True)
      time.sleep(0.05)

  def last_good(self) -> str:
    """Where the run can resume from, for messages."""
    if self.good is None:
      return "no checkpoint was saved"
    return f"the last good checkpoint is step {self.good} in {self.directory}"

  def restore(self, state_like: Any, step: int | None = None,
              accept: Callable[[dict], None] | None = None) -> tuple[Any, dict, int]:
    """(state, data iterator state, step) of `step` or the newest intact checkpoint, laid
    out like `state_like`. `accept(data_state)` raising also marks a checkpoint damaged.
    Warns once per damaged checkpoint; raises DamagedError when none restores, and its
    StructureError at once for a checkpoint of another state structure."""
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    if not steps:
      raise DamagedError(f"no checkpoint in {self.directory}")
    damaged = []
    for s in steps:
      try:
        state, data_state = self._restore_step(s, state_like)
        if accept is not None:
          accept(data_state)
      except Exception as e:  # orbax, tensorstore and json raise many types for a bad file
        if _OTHER_STRUCTURE in str(e):  # every step would fail alike: stop, move nothing
          raise StructureError(
              f"checkpoint {os.path.join(self.directory, str(s))} holds another state "
              "structure than this config builds (another model or optimizer, such as "
              "optim.ema_decay on or off); it is intact and was not moved") from None
        damaged.append(f"{os.path.join(self.directory, str(s))} ({first_line(e)})")
        _warn(f"checkpoint {damaged[-1]} is damaged")
        continue
      self._set_aside([d for d in steps if d > s], s)
      self.good = s
      return state, data_state, s
    raise DamagedError(
        f"every checkpoint in {self.directory} is damaged (steps "
        f"{', '.join(map(str, steps))}; the newest: {damaged[0]}); nothing was moved")

  def _restore_step(self, step: int, state_like: Any) -> tuple[Any, dict]:
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    if not isinstance(restored["data"], dict):
      raise ValueError(f"data state is a {type(restored['data']).__name__}, not a dict")
    return restored["state"], restored["data"]

  def _set_aside(self, steps: list[int], restored: int) -> None:
    """Renames damaged `steps` to `<step>.damaged[.N]`: kept, but no longer a checkpoint,
    so the resumed run can save those steps again."""
    if not steps:
      return
    if jax.process_index() == 0:
      for s in steps:
        path = os.path.join(self.directory, str(s))
        target, n = f"{path}.damaged", 1
        while os.path.exists(target):
          target, n = f"{path}.damaged.{n}", n + 1
        os.rename(path, target)
      _warn(f"resuming from step {restored}, the newest intact checkpoint in "
            f"{self.directory}; the damaged ones are kept as <step>.damaged")
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("attention_jax: damaged checkpoints set aside")
    self.manager.reload()

  def drop_after(self, step: int) -> None:
    """Deletes the checkpoints after `step`: written by an attempt whose later steps the
    resumed run redoes (the same steps give the same states)."""
    for s in self.manager.all_steps():
      if s > step:
        self.manager.delete(s)
    self.good = self.manager.latest_step()

  def close(self) -> None:
    """Waits for the pending save (WriteError if it failed) and closes orbax; a failure
    already reported is not raised again."""
    try:
      self._settle()
    finally:
      try:
        self.manager.close()
      except Exception:  # the failed save again: _settle or save reported it already
        pass
      self._remove_partials()  # all writers have stopped: whatever is left is partial
