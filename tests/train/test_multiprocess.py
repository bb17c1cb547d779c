"""Two CPU processes joined by jax.distributed train the smoke config like one process does."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FLAGS = ["--config=experiments/g2p_attention.py:smoke=True", "--config.data.name=algorithmic/copy",
         "--config.evals.dev.examples=16", "--config.evals.dev.heatmaps=1",
         "--config.evals.dev.metrics=sequence_accuracy,token_error_rate"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir, data_dir, **env):
  env = dict(os.environ, ATTENTION_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu", **env)
  env.pop("XLA_FLAGS", None)  # one CPU device per process
  return subprocess.Popen([sys.executable, "-m", "attention_jax.main", *FLAGS,
                           f"--workdir={workdir}"], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _losses(workdir):
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [(r["step"], r["split"], r["loss"]) for r in rows]


def test_two_processes_agree_with_one(tmp_path, shared_data_dir):
  data_dir = shared_data_dir
  single = _launch(tmp_path / "single", data_dir)  # builds the data if no test has yet
  out = single.communicate(timeout=600)[0]
  assert single.returncode == 0, out[-3000:]

  port = _free_port()
  procs = [_launch(tmp_path / "multi", data_dir, JAX_COORDINATOR_ADDRESS=f"localhost:{port}",
                   JAX_NUM_PROCESSES="2", JAX_PROCESS_ID=str(i)) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, text in zip(procs, outs):
    assert p.returncode == 0, text[-3000:]
  assert "results:" in outs[0] and "results:" not in outs[1]  # process 0 alone reports

  one, two = _losses(tmp_path / "single"), _losses(tmp_path / "multi")
  assert [r[:2] for r in one] == [r[:2] for r in two]  # written once, not once per process
  np.testing.assert_allclose([r[2] for r in two], [r[2] for r in one], rtol=1e-5)
  result = json.loads((tmp_path / "multi" / "result.json").read_text())
  expected = json.loads((tmp_path / "single" / "result.json").read_text())
  assert result["final"]["token_error_rate"] == expected["final"]["token_error_rate"]
