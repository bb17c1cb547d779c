"""The local backend: trials as subprocesses, N at a time, each pinned to its share of cores.

XLA on CPU sizes its thread pool from the process's CPU affinity, so each
trial is started with `sched_setaffinity` to its own cores (the equivalent of
`taskset -c`), and OpenMP/BLAS thread counts to match: N trials never run more
compute threads than the machine has. Trials start in their own session, so
Ctrl-C reaches only the sweep, which then sends SIGTERM to every running trial:
the trainer saves a checkpoint and the next run of the sweep resumes it.
"""
from __future__ import annotations

import os
import queue
import shlex
import signal
import subprocess
import threading
from typing import Callable, Sequence

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


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


class Job:
  """One trial to run: its command, log file and the callback for its end."""

  def __init__(self, name: str, command: list[str], log_path: str,
               on_start: Callable[[str, list[int]], None],
               on_end: Callable[[str, int, bool], None]):
    self.name, self.command, self.log_path = name, command, log_path
    self.on_start, self.on_end = on_start, on_end


def run(jobs: Sequence[Job], max_parallel: int, cwd: str) -> bool:
  """Runs `jobs`, at most `max_parallel` at once; returns False if interrupted.

  `on_end(name, exit_code, interrupted)` is called as each finishes; a failure
  never stops the others.
  """
  groups = core_groups(max(1, max_parallel), available_cores())
  todo: queue.Queue = queue.Queue()
  for job in jobs:
    todo.put(job)
  stop = threading.Event()
  running: dict[str, subprocess.Popen] = {}
  lock = threading.Lock()

  def worker(cores: list[int]):
    while not stop.is_set():
      try:
        job = todo.get_nowait()
      except queue.Empty:
        return
      with open(job.log_path, "a") as log:
        with lock:
          if stop.is_set():
            return
          job.on_start(job.name, cores)
          proc = subprocess.Popen(
              job.command, cwd=cwd, env=pinned_env(cores), stdout=log, stderr=subprocess.STDOUT,
              stdin=subprocess.DEVNULL, start_new_session=True)
          if hasattr(os, "sched_setaffinity"):  # before the interpreter starts any thread
            os.sched_setaffinity(proc.pid, cores)
          running[job.name] = proc
        code = proc.wait()
      with lock:
        running.pop(job.name)
      job.on_end(job.name, code, stop.is_set())

  def interrupt(signum, _):
    stop.set()
    with lock:
      for proc in running.values():
        proc.send_signal(signal.SIGTERM)  # the trainer checkpoints and exits

  previous = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
  threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in groups]
  try:
    for t in threads:
      t.start()
    for t in threads:
      t.join()
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
  return not stop.is_set()
