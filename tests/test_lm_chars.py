"""experiments/lm_chars.py from the command line on a small fortunes directory the test writes:
it trains, prints sampled continuations, draws each head, reports consistent metrics, and an
interrupted run resumes to the same parameters."""
import json
import math
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

# One xdist worker runs the whole module: its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("test_lm_chars")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIPS = ["A fool and his money are soon parted.", "He who laughs last laughs best.",
         "Never put off till tomorrow what you can do today.", "Time flies like an arrow.",
         "All that glitters is not gold.", "Where there's a will there's a way."]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """(manual dir, data dir): 120 %-separated fortunes in two files."""
  root = tmp_path_factory.mktemp("fortunes")
  for name, start in (("proverbs", 0), ("sayings", 60)):
    entries = [f"{QUIPS[i % len(QUIPS)]} (no. {i})" for i in range(start, start + 60)]
    (root / name).write_text("\n%\n".join(entries) + "\n%\n")
  return str(root), str(tmp_path_factory.mktemp("data"))


def _command(workdir, manual_dir, *flags):
  return [sys.executable, "-m", "attention_jax.main",
          f"--config={ROOT}/experiments/lm_chars.py:smoke=True", f"--workdir={workdir}",
          f"--config.data.manual_dir={manual_dir}", "--config.data.batch_size=8",
          "--config.data.eval_batch_size=8", *flags]


def _env(data_dir):
  env = dict(os.environ, ATTENTION_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return env


def _params(workdir):
  path = os.path.join(workdir, "checkpoints", "8", "state")
  return ocp.StandardCheckpointer().restore(path)["params"]


def test_trains_samples_draws_and_reports(corpus, tmp_path):
  manual_dir, data_dir = corpus
  proc = subprocess.run(_command(tmp_path / "run", manual_dir), capture_output=True,
                        text=True, cwd=ROOT, env=_env(data_dir), timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  samples = [line for line in proc.stdout.splitlines() if line.startswith("  '")]
  assert len(samples) == 2 and all(" -> " in line for line in samples)  # one per evaluation
  result = json.loads((tmp_path / "run" / "result.json").read_text())
  final = result["final"]
  assert result["best_by"] == "bits_per_char" and result["step"] == 6
  np.testing.assert_allclose(final["perplexity"], math.exp(final["nll"]), rtol=1e-6)
  np.testing.assert_allclose(final["bits_per_char"], final["nll"] / math.log(2), rtol=1e-6)
  grid = tmp_path / "run" / "attention" / "step_6" / "example_0_decoder_self_attention.png"
  assert grid.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_killed_run_resumes_to_the_same_parameters(corpus, tmp_path):
  manual_dir, data_dir = corpus
  flags = ["--config.train.steps=8", "--config.train.checkpoint_every=2",
           "--config.evals.dev.every=8", "--config.evals.dev.heatmaps=0"]
  straight = subprocess.run(_command(tmp_path / "straight", manual_dir, *flags), cwd=ROOT,
                            env=_env(data_dir), capture_output=True, text=True, timeout=600)
  assert straight.returncode == 0, straight.stderr[-3000:]
  workdir = tmp_path / "killed"
  proc = subprocess.Popen(_command(workdir, manual_dir, *flags), cwd=ROOT, env=_env(data_dir),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  marker = workdir / "checkpoints" / "2" / "commit_success.txt"
  deadline = time.monotonic() + 300
  while not marker.exists():  # poll the run's own progress: the checkpoint of step 2
    assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
    time.sleep(0.1)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  resumed = subprocess.run(_command(workdir, manual_dir, *flags), cwd=ROOT, env=_env(data_dir),
                           capture_output=True, text=True, timeout=600)
  assert resumed.returncode == 0 and "resumed from" in resumed.stdout, resumed.stderr[-3000:]
  for a, b in zip(jax.tree.leaves(_params(tmp_path / "straight")), jax.tree.leaves(_params(workdir))):
    np.testing.assert_array_equal(a, b)
