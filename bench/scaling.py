"""Benchmark: how cost grows, in one run.

`scaling_attention`: causal self-attention forward + backward (8 heads of 64,
batch 1, fp32) at T = 512 ... 16384, our `blockwise` implementation against
torch SDPA: time, FLOP/s (`attention.attention_flops`), XLA's compiled memory
and both frameworks' peak RSS (`bench/memory.py`).

`scaling_g2p_batch`: the default G2P RNN's training step (`bench/train_g2p.py`'s
case "default") at batch 32 ... 512 on real batches: seconds per step and
target tokens/s.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import data, tasks
from bench import attention, harness, train_g2p

LENGTHS = (512, 1024, 2048, 4096, 8192, 16384)
BATCH_SIZES = (32, 64, 128, 256, 512)
BATCHES = 4  # real batches per timed call of the RNN step


def run_attention(repeats: int, budget_s: float, rss: bool = True) -> list[harness.Row]:
  from bench import memory
  rows = []
  for length in LENGTHS:
    case = attention.Case(1, length, causal=True, backward=True)
    arrays = attention.inputs(1, length)
    device_arrays = [jnp.asarray(a) for a in arrays]
    compiled, mem = attention.compile_jax("blockwise", case)
    fns = {"blockwise": lambda: jax.block_until_ready(compiled(*device_arrays))}
    if harness.have_torch():
      t_args = attention.torch_inputs(arrays, backward=True)
      t_fn = attention.torch_fn(causal=True, backward=True)
      fns["torch"] = lambda: t_fn(*t_args)
    times = harness.measure(fns, repeats=repeats, warmup=1, budget_s=budget_s)
    for impl in times:
      extra = dict(mem) if impl == "blockwise" else {}
      extra["gflops"] = attention.attention_flops(case) / np.median(times[impl]) / 1e9
      if rss and jax.default_backend() == "cpu":
        extra["peak_rss_mib"] = memory.attention_rss_mib(impl, case)
      label, base = (("torch sdpa", None) if impl == "torch" else
                     ("jax blockwise", "torch sdpa" if "torch" in times else None))
      rows.append(harness.Row("scaling_attention", f"T={length}", label, times[impl], base,
                              extra))
    del device_arrays, fns
  return rows


def run_batch_sizes(repeats: int, budget_s: float) -> list[harness.Row]:
  rows = []
  config = train_g2p.load_config(*train_g2p.CASES["rnn"]["default (hidden 128)"])
  task = tasks.build_task(config, data.from_config(config.data))
  for batch_size in BATCH_SIZES:
    config.data.batch_size = batch_size
    batches = train_g2p.real_batches(task, config, BATCHES)
    state, train = train_g2p.jax_side(task, config)
    holder, rng = {"state": state}, jax.random.key(1)

    def ours():
      for batch in batches:
        holder["state"], metrics = train(holder["state"], batch, rng)
      jax.block_until_ready(metrics["loss"])

    times = harness.measure({"jax": ours}, repeats=repeats, warmup=2, budget_s=budget_s)
    per_step = [t / BATCHES for t in times["jax"]]
    tokens = float(np.mean([b["target_lengths"].sum() for b in batches]))
    rows.append(harness.Row("scaling_g2p_batch", f"B={batch_size}", "jax train_step", per_step,
                            None, {"target_tokens_per_s": tokens / float(np.median(per_step))}))
  return rows
