"""Peak resident memory of one attention call, in a fresh process.

    python -m bench.memory IMPL BATCH LENGTH CAUSAL BACKWARD   # IMPL: reference|blockwise|xla|torch
    python -m bench.memory baseline-jax | baseline-torch

A small intermediate process (`measure`) runs the child and prints
`getrusage(RUSAGE_CHILDREN).ru_maxrss`, its only child's peak; the benchmark
subtracts the peak of an idle interpreter that has imported the same framework
(and, for JAX, started its CPU backend). The figure includes the inputs (q, k,
v, g: 64 MiB at the T=2048 and T=8192 shapes, briefly twice while the NumPy
originals are converted), the outputs or gradients, and for JAX the compiler's
own memory while it compiles the call.
"""
from __future__ import annotations

import functools
import os
import subprocess
import sys

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _child_peak_mib(args: list[str]) -> float:
  """Peak RSS of `python -m bench.memory ARGS`, started by a small `measure` process.

  Not started from this process: a forked child's high-water mark starts at
  its parent's RSS (Linux carries it across exec), and the parent has by now
  allocated gigabytes. The intermediate process is a bare interpreter.
  """
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  out = subprocess.run([sys.executable, "-m", "bench.memory", "measure", *args], cwd=_ROOT,
                       env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
  return int(out.split()[-1]) / 1024  # Linux reports KiB


def _measure(args: list[str]) -> None:
  """Runs the child and prints its ru_maxrss (KiB); as the only child, RUSAGE_CHILDREN is its."""
  import resource
  subprocess.run([sys.executable, "-m", "bench.memory", *args], check=True,
                 stdout=subprocess.DEVNULL)
  print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)


@functools.lru_cache(maxsize=None)
def baseline_mib(framework: str) -> float:
  return _child_peak_mib([f"baseline-{framework}"])


def attention_rss_mib(impl: str, case) -> float:
  """Peak RSS (MiB) of one attention call of `case`, less the idle baseline."""
  framework = "torch" if impl == "torch" else "jax"
  peak = _child_peak_mib([impl, str(case.batch), str(case.length), str(int(case.causal)),
                          str(int(case.backward))])
  return peak - baseline_mib(framework)


def _run(argv: list[str]) -> None:
  if argv[0] == "measure":
    return _measure(argv[1:])
  if argv[0].startswith("baseline-"):
    if argv[0] == "baseline-torch":
      import torch
      torch.set_num_threads(os.cpu_count())
      torch.zeros(1).sum()
    else:
      import jax.numpy as jnp
      from attention_jax.attention import core  # noqa: F401  (the same imports as a run)
      jnp.zeros(1).block_until_ready()
    return
  from bench import attention
  impl, batch, length, causal, backward = argv
  causal, backward = bool(int(causal)), bool(int(backward))
  arrays = list(attention.inputs(int(batch), int(length)))
  if impl == "torch":
    import torch
    torch.set_num_threads(os.cpu_count())
    args = attention.torch_inputs(arrays, backward)
    arrays.clear()  # only the framework's copies stay, as in the parent
    attention.torch_fn(causal, backward)(*args)
  else:
    import jax
    import jax.numpy as jnp
    args = [jnp.asarray(a) for a in arrays]
    arrays.clear()
    jax.block_until_ready(jax.jit(attention.jax_fn(impl, causal, backward))(*args))

if __name__ == "__main__":
  _run(sys.argv[1:])
