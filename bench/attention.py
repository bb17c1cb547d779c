"""Benchmark 1: scaled dot-product self-attention, ours vs torch SDPA.

fp32 on a CPU (bf16 on a GPU or TPU), 8 heads of 64, batch 4 at T = 512 and
2048 and batch 1 at T = 8192; causal and not; forward, and forward + backward
(the gradients of sum(out * g) with respect to q, k, v). Ours:
`core.dot_product_attention` with implementation 'reference', 'blockwise' and
'xla' (`jax.nn.dot_product_attention`), in our BTNH layout, and on a GPU
'pallas_gpu' and 'cudnn', on a TPU 'splash'; the peer (on a CPU):
`torch.nn.functional.scaled_dot_product_attention` in its BHTD layout.

Memory per implementation: XLA's compiled memory analysis (arguments +
outputs + temporaries) for ours, and the peak RSS of a fresh process running
one call (`bench/memory.py`) for both, less an idle interpreter's.
Implementations whose compiled program would need more than
`MAX_TIMED_GIB` are reported (memory) but not run.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.attention import core
from bench import harness

NAME = "attention"
HEADS, HEAD_DIM = 8, 64
SHAPES = ((4, 512), (4, 2048), (1, 8192))  # (batch, length)
OURS = ("reference", "blockwise", "xla")
MAX_TIMED_GIB = 3.5  # 24 GiB, shared; skips only the T=8192 reference/xla runs (4-10 GiB)
# The kernels a platform adds (there, in bfloat16: `harness.compute_dtype`).
PLATFORM_KERNELS = {"gpu": ("pallas_gpu", "cudnn"), "tpu": ("splash",)}


def implementations() -> tuple[str, ...]:
  """Ours on this platform: the portable three, and JAX's Pallas kernels on GPU / TPU."""
  return OURS + PLATFORM_KERNELS.get(jax.default_backend(), ())


def attention_flops(case) -> float:
  """Matmul FLOPs: QK^T and PV, 2·T²·D·H each per sequence, halved by a causal mask; the
  backward adds five such matmuls (the scores recomputed among them)."""
  forward = 4.0 * case.batch * case.length ** 2 * HEAD_DIM * HEADS / (2 if case.causal else 1)
  return forward * (3.5 if case.backward else 1.0)


@dataclasses.dataclass(frozen=True)
class Case:
  batch: int
  length: int
  causal: bool
  backward: bool

  @property
  def label(self) -> str:
    return (f"B={self.batch} T={self.length} {'causal' if self.causal else 'full'} "
            f"{'fwd+bwd' if self.backward else 'fwd'}")


def inputs(batch: int, length: int, seed: int = 0) -> tuple[np.ndarray, ...]:
  """q, k, v and the output cotangent g, `[batch, length, heads, head_dim]` float32
  (cast to `harness.compute_dtype()` on the device)."""
  rng = np.random.default_rng(seed)
  return tuple(rng.standard_normal((batch, length, HEADS, HEAD_DIM), dtype=np.float32)
               for _ in range(4))


def jax_fn(impl: str, causal: bool, backward: bool):
  """f(q, k, v, g) -> output, or the gradients of sum(output * g) w.r.t. q, k, v."""
  def attention(q, k, v):
    return core.dot_product_attention(q, k, v, is_causal=causal, implementation=impl)

  if not backward:
    return lambda q, k, v, g: attention(q, k, v)
  return jax.grad(lambda q, k, v, g: jnp.sum(attention(q, k, v) * g), argnums=(0, 1, 2))


def torch_fn(causal: bool, backward: bool):
  """The same on BHTD tensors (q, k, v with requires_grad for the backward)."""
  import torch
  from torch.nn import functional as F

  def forward(q, k, v, g):
    with torch.no_grad():
      return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

  def gradients(q, k, v, g):
    out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    return torch.autograd.grad(out, (q, k, v), g)

  return gradients if backward else forward


def torch_inputs(arrays, backward: bool):
  import torch
  tensors = [torch.from_numpy(np.ascontiguousarray(a.transpose(0, 2, 1, 3))) for a in arrays]
  for t in tensors[:3]:
    t.requires_grad_(backward)
  return tensors


def compile_jax(impl: str, case: Case):
  """(compiled executable, its memory in MiB: temp and total)."""
  spec = jax.ShapeDtypeStruct((case.batch, case.length, HEADS, HEAD_DIM),
                              harness.compute_dtype())
  compiled = jax.jit(jax_fn(impl, case.causal, case.backward)).lower(
      spec, spec, spec, spec).compile()
  stats = compiled.memory_analysis()
  total = (stats.temp_size_in_bytes + stats.argument_size_in_bytes + stats.output_size_in_bytes
           - stats.alias_size_in_bytes)
  return compiled, {"temp_mib": stats.temp_size_in_bytes / 2**20, "compiled_mib": total / 2**20}


def cases(quick: bool) -> list[Case]:
  out = []
  for batch, length in SHAPES:
    for causal in (True, False):
      if quick and not causal:
        continue
      for backward in (False, True):
        out.append(Case(batch, length, causal, backward))
  return out


def run(repeats: int, budget_s: float, quick: bool = False, rss: bool = True,
        peak_flops: float | None = None) -> list[harness.Row]:
  """The rows; `peak_flops` (a large matmul's, this run) adds each one's fraction of it."""
  from bench import memory
  rows, ours, peer = [], implementations(), harness.have_torch()
  for case in cases(quick):
    arrays = inputs(case.batch, case.length)
    device_arrays = [jnp.asarray(a, harness.compute_dtype()) for a in arrays]
    fns, extras = {}, {}
    for impl in ours:
      try:
        compiled, mem = compile_jax(impl, case)
      except Exception as e:  # pylint: disable=broad-except
        if impl in OURS:  # the portable three must compile everywhere
          raise
        # A device kernel this shape or toolchain does not support: say so, time the rest.
        extras[impl] = {"skipped": harness.skip_note(e)}
        continue
      extras[impl] = dict(mem)
      if mem["compiled_mib"] > MAX_TIMED_GIB * 1024:
        extras[impl]["skipped"] = f"needs {mem['compiled_mib'] / 1024:.1f} GiB"
        continue
      fns[impl] = lambda c=compiled: jax.block_until_ready(c(*device_arrays))
    t_args = torch_inputs(arrays, case.backward) if peer else None
    if peer:
      t_fn = torch_fn(case.causal, case.backward)
      fns["torch"], extras["torch"] = (lambda: t_fn(*t_args)), {}
    times = harness.measure(fns, repeats=repeats, warmup=1, budget_s=budget_s)
    on_cpu = jax.default_backend() == "cpu"  # RSS says nothing of a device's memory
    if rss and on_cpu and case.causal and case.backward and (
        not quick or case.length == SHAPES[-1][1]):
      for impl in extras:
        if "skipped" not in extras[impl]:
          extras[impl]["peak_rss_mib"] = memory.attention_rss_mib(impl, case)
    for impl in extras:
      if times.get(impl):
        extras[impl]["tflops"] = attention_flops(case) / float(np.median(times[impl])) / 1e12
        if peak_flops:
          extras[impl]["peak_fraction"] = extras[impl]["tflops"] * 1e12 / peak_flops
      label = "torch sdpa" if impl == "torch" else f"jax {impl}"
      # Without the peer (a GPU or TPU), each is divided by jax.nn's XLA attention.
      base = ("torch sdpa" if peer else "jax xla") if impl not in ("torch", "xla") else None
      rows.append(harness.Row(NAME, case.label, label, times.get(impl, []), base, extras[impl]))
    del device_arrays, t_args
  return rows
