"""`make train`'s demonstration runs end to end and writes sound results."""
import json
import os
import subprocess
import sys


def test_demo_writes_results(tmp_path):
  workdir = tmp_path / "demo"
  proc = subprocess.run([sys.executable, "-m", "attention_jax.demo", f"--workdir={workdir}"],
                        capture_output=True, text=True, timeout=300, env=os.environ)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert f"results: {workdir}/results.json" in proc.stdout
  results = json.loads((workdir / "results.json").read_text())
  assert max(results["max_abs_error_T1024"].values()) < 1e-4
  memory = results["temp_memory_mib"]["16384"]
  assert memory["blockwise fwd+bwd"] * 100 < memory["reference fwd+bwd"]
  assert (workdir / "memory.png").stat().st_size > 10_000
