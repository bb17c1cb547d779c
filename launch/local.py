"""The local backend: trials as subprocesses, N at a time, each pinned to its share of cores.

XLA on CPU sizes its thread pool from the process's CPU affinity, so each
trial is started with `sched_setaffinity` to its own cores (the equivalent of
`taskset -c`), and OpenMP/BLAS thread counts to match: N trials never run more
compute threads than the machine has. Trials start in their own session, so
Ctrl-C reaches only the sweep, which then sends SIGTERM to every running trial:
the trainer saves a checkpoint and the next run of the sweep resumes it. On
Linux a trial also gets SIGTERM when the sweep dies outright (`kill -9`), so it
saves and ends instead of running on unwatched. A trial whose workdir lock is
held by a live trainer (one left by a killed sweep, or started by hand) is
waited for, never started a second time. A job with `on_poll` is watched while it
runs (a search reads its metrics and may stop it: SIGTERM, as on Ctrl-C).
"""
from __future__ import annotations

import ctypes
import dataclasses
import os
import shlex
import signal
import subprocess
import sys
import threading
from typing import Callable, Iterable, Optional, Sequence

from attention_jax.train import lock as lock_lib

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
POLL_S = 0.5  # how often a waiting trial looks at a lock, and a watched one at its files
REFUSED = 2  # the trainer's exit code when it refuses a workdir (its lock says "is in use by")
_PR_SET_PDEATHSIG = 1


def available_cores() -> list[int]:
  return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(
      range(os.cpu_count() or 1))


def core_groups(parallel: int, cores: Sequence[int]) -> list[list[int]]:
  """`parallel` disjoint, near-equal groups of `cores` (shared round-robin if too few)."""
  if parallel <= len(cores):
    bounds = [round(i * len(cores) / parallel) for i in range(parallel + 1)]
    return [list(cores[a:b]) for a, b in zip(bounds, bounds[1:])]
  return [[cores[i % len(cores)]] for i in range(parallel)]


def pinned_env(cores: Sequence[int], env=None) -> dict[str, str]:
  env = dict(os.environ if env is None else env)
  env.update({var: str(len(cores)) for var in THREAD_VARS})
  return env


def shell_line(command: Sequence[str], cores: Sequence[int]) -> str:
  """What the local backend runs for a trial, as one shell line (for --backend=print)."""
  threads = " ".join(f"{var}={len(cores)}" for var in THREAD_VARS)
  return f"{threads} taskset -c {','.join(map(str, cores))} {shlex.join(command)}"


def refused(code: int, log_path: str) -> bool:
  """Whether the trainer exited because another process holds its workdir."""
  if code != REFUSED:
    return False
  try:
    with open(log_path, "rb") as f:
      f.seek(max(0, f.seek(0, os.SEEK_END) - 4096))  # the last line is all that matters
      text = f.read().decode(errors="replace")
  except OSError:
    return False
  last = [line for line in text.splitlines() if line.strip()][-1:]
  return bool(last) and "is in use by" in last[0]


def _load_prctl():
  """libc's prctl, resolved here: the child between fork and exec must not load libraries."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    return ctypes.CDLL(None, use_errno=True).prctl
  except (OSError, AttributeError):
    return None


_PRCTL = _load_prctl()


def _child_setup(parent_pid: int, cores: Sequence[int]) -> Callable[[], None]:
  """A preexec_fn: pin the child to `cores`, and SIGTERM it when the sweep dies.

  The affinity is set before exec, so no thread of the trainer ever runs elsewhere.
  PR_SET_PDEATHSIG fires when the forking *thread* exits; each worker thread below
  forks its trial and waits for it, so it outlives the trial unless the whole sweep
  dies. The parent may die before the prctl: then the child ends itself.
  """
  def preexec():
    if hasattr(os, "sched_setaffinity"):
      os.sched_setaffinity(0, cores)
    if _PRCTL is not None:
      _PRCTL(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent_pid:
      os.kill(os.getpid(), signal.SIGTERM)
  return preexec


@dataclasses.dataclass
class Job:
  """One trial to run: its command, log file and callbacks.

  `on_start(name, cores)` before it starts, `on_end(name, exit_code, interrupted)` after.
  With `workdir`, a live process holding its lock is waited for first
  (`on_wait(name, holder)`), and when `finished(name)` is then true nothing is started:
  `on_end(name, 0, False)`. With `on_poll`, `on_poll(name)` runs every POLL_S while the
  trial runs; when it returns True the trial gets SIGTERM (it saves and exits).
  """
  name: str
  command: list[str]
  log_path: str
  on_start: Callable[[str, list[int]], None]
  on_end: Callable[[str, int, bool], None]
  workdir: Optional[str] = None
  on_wait: Optional[Callable[[str, str], None]] = None
  finished: Optional[Callable[[str], bool]] = None
  on_poll: Optional[Callable[[str], bool]] = None


class _Runner:
  """The queue of jobs, the worker threads that run them and the running processes."""

  def __init__(self, jobs: Iterable[Job], max_parallel: int, cwd: str):
    self.cwd = cwd
    self.groups = core_groups(max(1, max_parallel), available_cores())
    # Pulled one at a time, when a worker is free: a search asks for its next trial then.
    self.todo = iter(jobs)
    self.todo_lock = threading.Lock()
    self.stop = threading.Event()
    self.running: dict[str, subprocess.Popen] = {}
    self.lock = threading.Lock()

  def next_job(self) -> Optional[Job]:
    with self.todo_lock:
      if self.stop.is_set():
        return None
      return next(self.todo, None)

  def worker(self, cores: list[int]) -> None:
    while (job := self.next_job()) is not None:
      self.run_job(job, cores)

  def run_job(self, job: Job, cores: list[int]) -> None:
    """Waits out another process's trainer, then runs the job (again if it was refused)."""
    for attempt in range(3):
      if not self.wait_free(job):
        return  # interrupted while another process still runs this trial
      if job.finished is not None and job.finished(job.name):
        job.on_end(job.name, 0, False)
        return
      code = self.start_and_wait(job, cores)
      if code is None:
        return
      # Refused: another process took the workdir between our look and the start.
      if attempt == 2 or self.stop.is_set() or not (job.workdir and refused(code, job.log_path)):
        job.on_end(job.name, code, self.stop.is_set())
        return

  def wait_free(self, job: Job) -> bool:
    """Polls the job's workdir lock until no live process holds it; False if interrupted."""
    holder = lock_lib.held_by(job.workdir) if job.workdir else None
    if holder is None:
      return True
    if job.on_wait is not None:
      job.on_wait(job.name, holder)
    while lock_lib.held_by(job.workdir) is not None:
      if self.stop.wait(POLL_S):
        return False
    return True

  def start_and_wait(self, job: Job, cores: list[int]) -> Optional[int]:
    """The job's exit code, or None when the sweep was interrupted before it started."""
    with open(job.log_path, "a") as log:
      with self.lock:
        if self.stop.is_set():
          return None
        job.on_start(job.name, cores)
        proc = subprocess.Popen(
            job.command, cwd=self.cwd, env=pinned_env(cores), stdout=log,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            preexec_fn=_child_setup(os.getpid(), cores))
        self.running[job.name] = proc
      code = proc.wait() if job.on_poll is None else self.watch(job, proc)
    with self.lock:
      self.running.pop(job.name)
    return code

  def watch(self, job: Job, proc: subprocess.Popen) -> int:
    """Waits for `proc`, calling `job.on_poll` every POLL_S; SIGTERM once it says stop."""
    stopped = False
    while True:
      try:
        return proc.wait(timeout=POLL_S)
      except subprocess.TimeoutExpired:
        pass
      if not stopped and job.on_poll(job.name):
        stopped = True
        with self.lock:
          proc.send_signal(signal.SIGTERM)  # the trainer checkpoints and exits 0

  def interrupt(self, signum, _) -> None:
    self.stop.set()
    with self.lock:
      for proc in self.running.values():
        proc.send_signal(signal.SIGTERM)  # the trainer checkpoints and exits


def run(jobs: Iterable[Job], max_parallel: int, cwd: str) -> bool:
  """Runs `jobs`, at most `max_parallel` at once; returns False if interrupted.

  `jobs` may be lazy: the next one is drawn when a worker is free, never after an interrupt.

  `on_end(name, exit_code, interrupted)` is called as each finishes; a failure
  never stops the others.
  """
  runner = _Runner(jobs, max_parallel, cwd)
  previous = {s: signal.signal(s, runner.interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
  threads = [threading.Thread(target=runner.worker, args=(g,), daemon=True)
             for g in runner.groups]
  try:
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  return not runner.stop.is_set()
