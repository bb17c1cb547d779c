"""The SLURM backend: one submitit job per trial.

A trial with G GPUs per node runs G tasks per node, one process per GPU;
each task runs the trainer, whose `jax.distributed.initialize()` reads the
job from SLURM's environment. Task 0 writes the trial's `log.txt`, task i
`log.txt.task<i>`. submitit keeps its own files (scripts, pickles, SLURM
output) in `<root>/submitit/`. Tests use submitit's local executor
(`cluster="local"`), which runs the same path without a cluster.
"""
from __future__ import annotations

import os
import subprocess
from typing import Any

import submitit


def run_trial(command: list[str], cwd: str, log_path: str) -> int:
  """What every SLURM task of a trial runs: the trainer, output to the trial's log."""
  rank = submitit.JobEnvironment().global_rank
  path = log_path if rank == 0 else f"{log_path}.task{rank}"
  with open(path, "a") as log:
    return subprocess.run(command, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, check=False).returncode


def parameters(partition: str | None, gpus: int, time_min: int, cpus: int, nodes: int,
               name: str) -> dict[str, Any]:
  """submitit's executor parameters for one trial."""
  params = dict(name=name, timeout_min=time_min, nodes=nodes, tasks_per_node=max(gpus, 1),
                cpus_per_task=cpus)
  if gpus:
    params["gpus_per_node"] = gpus
  if partition:
    params["slurm_partition"] = partition
  return params


def parameters_from(args, defaults: dict[str, Any], root: str) -> dict[str, Any]:
  """`parameters` from the sweep's flags (--partition, --gpus, ...), else the experiment's
  SLURM defaults, else ours."""
  pick = lambda key, fallback: (getattr(args, key) if getattr(args, key) is not None
                                else defaults.get(key, fallback))
  return parameters(pick("partition", None), pick("gpus", 0), pick("time", 240),
                    pick("cpus", 8), pick("nodes", 1), name=os.path.basename(root))


def submit(jobs: list[tuple[str, list[str], str]], folder: str, cwd: str, params: dict[str, Any],
           cluster: str | None = None) -> dict[str, submitit.Job]:
  """Submits (name, command, log path) jobs; returns their submitit jobs by name."""
  executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
  executor.update_parameters(**params)
  return {name: executor.submit(run_trial, command, cwd, log) for name, command, log in jobs}


def exit_code(job: submitit.Job) -> int:
  """The trainer's exit code from task 0 (1 if the job itself failed, e.g. timed out)."""
  try:
    codes = job.results()
  except Exception:  # pylint: disable=broad-except  # submitit raises its own failure types
    return 1
  return next((c for c in codes if c), 0)


def pending(folder: str, job_id: str) -> bool:
  """Whether a job submitted earlier is still queued or running (asks SLURM)."""
  try:
    state = submitit.SlurmJob(folder=folder, job_id=job_id).state
  except Exception:  # pylint: disable=broad-except  # no sacct here: treat as gone
    return False
  return state in ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING")
