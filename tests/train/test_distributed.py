"""When the trainer joins a multi-process job (the call itself needs a cluster)."""
import pytest

from attention_jax.train import distributed


@pytest.mark.parametrize("env,expected", [
    ({}, False),
    ({"SLURM_NTASKS": "1"}, False),
    ({"SLURM_NTASKS": "4"}, True),
    ({"JAX_NUM_PROCESSES": "2", "JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ({"TPU_WORKER_HOSTNAMES": "t1v-0"}, False),
    ({"TPU_WORKER_HOSTNAMES": "t1v-0,t1v-1,t1v-2,t1v-3"}, True),
    ({"ATTENTION_JAX_DISTRIBUTED": "1"}, True),
])
def test_multi_process_is_read_from_the_environment(env, expected):
  assert distributed.multi_process(env) is expected


def test_single_process_does_not_initialize():
  assert distributed.initialize({}) is False


def test_explicit_coordinator_is_passed_on(monkeypatch):
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda **kw: calls.append(kw))
  env = {"JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1", "JAX_COORDINATOR_ADDRESS": "h:1234"}
  assert distributed.initialize(env) is True
  assert calls == [dict(coordinator_address="h:1234", num_processes=2, process_id=1)]
  calls.clear()
  assert distributed.initialize({"SLURM_NTASKS": "8"}) is True
  assert calls == [{}]  # SLURM: JAX reads the cluster itself
