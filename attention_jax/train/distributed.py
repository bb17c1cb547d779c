"""Multi-process start-up: `jax.distributed.initialize()` when the job has several processes.

JAX finds the coordinator itself on SLURM and Cloud TPU VMs (launch/tpu_vm.sh
sets ATTENTION_JAX_DISTRIBUTED=1 to ask for it); elsewhere set
JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID (on CPU, JAX
joins the processes with gloo). Each process then feeds its block of every
global batch, process 0 alone writes files, and the run equals a
single-process one (tests/train/test_multiprocess.py).
"""
from __future__ import annotations

import os
from typing import Mapping

import jax


def multi_process(env: Mapping[str, str] = os.environ) -> bool:
  """Whether the environment describes a job of several processes."""
  if env.get("ATTENTION_JAX_DISTRIBUTED") == "1":  # set by launch/tpu_vm.sh: JAX finds the rest
    return True
  if int(env.get("JAX_NUM_PROCESSES", "1") or 1) > 1:
    return True
  if int(env.get("SLURM_NTASKS", "1") or 1) > 1:
    return True
  # A multi-host TPU slice lists every worker.
  return len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1


def initialize(env: Mapping[str, str] = os.environ) -> bool:
  """Joins the job when there is one to join; returns whether it did."""
  if not multi_process(env):
    return False
  kwargs = {}
  if "JAX_COORDINATOR_ADDRESS" in env:
    kwargs = dict(coordinator_address=env["JAX_COORDINATOR_ADDRESS"],
                  num_processes=int(env["JAX_NUM_PROCESSES"]),
                  process_id=int(env["JAX_PROCESS_ID"]))
  jax.distributed.initialize(**kwargs)  # SLURM / TPU VM: found from the environment
  return True
