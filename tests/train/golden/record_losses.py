r"""Records the per-step training losses of the default experiment (g2p_attention, seed 0).

    python tests/train/golden/record_losses.py OUT.json [--steps=100] [extra --config flags]

Run once on the code before the Task redesign (commit 613c3e6) to make
`g2p_attention_losses.json`; `tests/train/test_golden_losses.py` checks that the
current trainer reproduces those losses bit for bit. The record names the jax
version and CPU it was made on: XLA's CPU code (and so the last bits) can differ
with either.
"""
import json
import os
import platform
import subprocess
import sys
import tempfile

import jax

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
CONFIG = os.path.join(ROOT, "experiments", "g2p_attention.py")


def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    return platform.processor()


def losses(workdir: str, steps: int, extra: list[str], env: dict | None = None) -> list[float]:
  """Runs the trainer CLI for `steps` steps, logging every step; returns its train losses."""
  flags = [f"--config={CONFIG}", f"--workdir={workdir}", f"--config.train.steps={steps}",
           "--config.train.log_every=1", "--config.train.checkpoint_every=0", *extra]
  proc = subprocess.run([sys.executable, "-m", "attention_jax.main", *flags], cwd=ROOT,
                        capture_output=True, text=True, env=env, timeout=1200)
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return [r["loss"] for r in rows if r["split"] == "train"]


def main(argv):
  out, steps = argv[1], 100
  extra = [a for a in argv[2:] if not a.startswith("--steps=")]
  steps = next((int(a.split("=")[1]) for a in argv[2:] if a.startswith("--steps=")), steps)
  with tempfile.TemporaryDirectory() as workdir:
    values = losses(workdir, steps, extra)
  record = {"config": "experiments/g2p_attention.py", "seed": 0, "steps": steps,
            "jax": jax.__version__, "cpu": cpu_model(), "losses": values}
  with open(out, "w") as f:
    json.dump(record, f, indent=1)


if __name__ == "__main__":
  main(sys.argv)
