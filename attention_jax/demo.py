"""A short demonstration of the attention core (what `make train` runs until the trainer lands).

    python -m attention_jax.demo --workdir=runs/demo

Checks blockwise attention against the reference on causal self-attention
(outputs and gradients), measures the compiled temp memory of both from
T=1024 to T=16384, and writes `results.json` and `memory.png` to the workdir.
"""
from __future__ import annotations

import json
import os

from absl import app, flags
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from attention_jax.attention import blockwise, core  # noqa: E402
from attention_jax.data import paths  # noqa: E402

_WORKDIR = flags.DEFINE_string("workdir", "runs/demo", "Where results.json and memory.png go.")
HEADS, HEAD_DIM, BLOCK = 8, 64, blockwise.DEFAULT_BLOCK
LENGTHS = (1024, 4096, 16384)


def _attention(implementation):
  return lambda q, k, v: core.dot_product_attention(
      q, k, v, is_causal=True, implementation=implementation, block_q=BLOCK, block_k=BLOCK)


def _with_grad(f):
  return jax.grad(lambda q, k, v: jnp.sum(f(q, k, v) ** 2), argnums=(0, 1, 2))


def max_errors(length: int = 1024) -> dict[str, float]:
  """Max |blockwise - reference| of the output and of each gradient, float32."""
  q, k, v = (jax.random.normal(key, (1, length, HEADS, HEAD_DIM))
             for key in jax.random.split(jax.random.key(0), 3))
  ref, blk = _attention("reference"), _attention("blockwise")
  errors = {"output": float(jnp.max(jnp.abs(jax.jit(ref)(q, k, v) - jax.jit(blk)(q, k, v))))}
  grads = zip(jax.jit(_with_grad(ref))(q, k, v), jax.jit(_with_grad(blk))(q, k, v))
  for name, (r, b) in zip(("d_query", "d_key", "d_value"), grads):
    errors[name] = float(jnp.max(jnp.abs(r - b)))
  return errors


def temp_memory_mib(implementation: str, length: int, backward: bool) -> float:
  """Compiled temp memory (MiB) of causal self-attention, B=1, from XLA's memory analysis."""
  spec = jax.ShapeDtypeStruct((1, length, HEADS, HEAD_DIM), jnp.float32)
  f = _attention(implementation)
  f = _with_grad(f) if backward else f
  stats = jax.jit(f).lower(spec, spec, spec).compile().memory_analysis()
  return stats.temp_size_in_bytes / 2**20


def main(argv):
  del argv
  workdir = _WORKDIR.value
  os.makedirs(workdir, exist_ok=True)
  print(f"blockwise vs reference, causal self-attention T=1024, {HEADS} heads x {HEAD_DIM}:")
  errors = max_errors()
  for name, err in errors.items():
    print(f"  max |error| {name:8s} {err:.2e}")
  memory = {}
  print("compiled temp memory (MiB), causal, B=1:")
  print(f"  {'T':>6s} {'reference fwd':>14s} {'blockwise fwd':>14s} "
        f"{'reference f+b':>14s} {'blockwise f+b':>14s}")
  for length in LENGTHS:
    row = {f"{impl} {pass_}": temp_memory_mib(impl, length, pass_ == "fwd+bwd")
           for pass_ in ("fwd", "fwd+bwd") for impl in ("reference", "blockwise")}
    memory[length] = row
    print(f"  {length:6d} " + " ".join(f"{v:14.1f}" for v in row.values()))
  results = {"max_abs_error_T1024": errors, "temp_memory_mib": memory,
             "heads": HEADS, "head_dim": HEAD_DIM, "block": BLOCK,
             "backend": jax.default_backend()}
  results_path = os.path.join(workdir, "results.json")
  paths.atomic_write_bytes(results_path, (json.dumps(results, indent=2) + "\n").encode())

  fig, ax = plt.subplots(figsize=(5, 3.5))
  for column in next(iter(memory.values())):
    ax.plot(LENGTHS, [memory[t][column] for t in LENGTHS], marker="o", label=column)
  ax.set(xscale="log", yscale="log", xlabel="sequence length T",
         ylabel="compiled temp memory (MiB)", title="Causal attention memory")
  ax.legend(fontsize=8)
  fig.tight_layout()
  plot_path = os.path.join(workdir, "memory.png")
  fig.savefig(plot_path, dpi=120)
  print(f"results: {results_path}\nplot:    {plot_path}")


if __name__ == "__main__":
  app.run(main)
