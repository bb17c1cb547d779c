r"""Records the per-step training losses of the default experiment (g2p_attention, seed 0).

    python tests/train/golden/record_losses.py OUT.json [--steps=100] [extra --config flags]

Run on the code before the Task redesign (commit 613c3e6) to add a record to
`g2p_attention_losses.json`; `tests/train/test_golden_losses.py` checks that the
current trainer reproduces those losses bit for bit. Each record names the jax
version and CPU it was made on: XLA's CPU code (and so the last bits) differs with
either, and a model name such as "AMD EPYC" names several CPUs, so the CPU is named
by family, model and vector instruction sets too. Recording on another machine adds
a record (one per jax and CPU).
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
  """'model name; family F model M; vector ISA flags': what XLA's CPU code depends on."""
  try:
    with open("/proc/cpuinfo") as f:
      first = f.read().split("\n\n")[0]  # the first processor's block
  except OSError:
    return platform.processor()
  fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in first.splitlines()
                                              if ":" in line)}
  get = lambda key: fields.get(key, "")
  isa = sorted(f for f in get("flags").split() if f.startswith(("avx", "amx", "fma")))
  return f"{get('model name')}; family {get('cpu family')} model {get('model')}; {' '.join(isa)}"


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
  golden = {"config": "experiments/g2p_attention.py", "seed": 0, "steps": steps, "records": []}
  if os.path.exists(out):
    with open(out) as f:
      golden = json.load(f)
  record = {"jax": jax.__version__, "cpu": cpu_model(), "losses": values}
  golden["records"] = [r for r in golden["records"]
                       if (r["jax"], r["cpu"]) != (record["jax"], record["cpu"])] + [record]
  with open(out, "w") as f:
    json.dump(golden, f, indent=1)


if __name__ == "__main__":
  main(sys.argv)
