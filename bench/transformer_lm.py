"""Benchmark 3: one training step of a decoder-only Transformer LM, ours vs PyTorch.

d_model 256, 4 layers, 4 heads, feed-forward 1024, vocabulary 8192, T=256,
batch 16, AdamW, no dropout. Ours is `DecoderOnlyLM` (`build_model`, name
'lm') trained by `train.steps.train_step` over `tasks.LMTask`'s loss with
`train.optim`'s AdamW, as the trainer runs it; the peer is `bench/torch_lm.py`.

Model FLOPs per token = 6N + 12 L H Q T (Kaplan et al. 2020; PaLM appendix
B), N the non-embedding parameters (attention and feed-forward kernels and
biases, layer norms). The tied output projection (2 x d x vocab per token
forward) is not in N; `hardware_flops` adds it. MFU divides model FLOP/s by
the machine's matmul peak, measured here as the faster of a 2048^3 fp32
matmul in JAX and in torch (on a GPU or TPU: 8192^3 in bf16, the dtype the
step computes in there, JAX alone).
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import tasks
from attention_jax.models.registry import build_model
from attention_jax.train import optim, steps
from bench import harness

NAME = "transformer_lm"
SIZES = dict(vocab=8192, d_model=256, layers=4, heads=4, d_ff=1024, length=256, batch=16)
OPTIM = dict(name="adamw", learning_rate=1e-3, warmup_steps=0, schedule="constant", b1=0.9,
             b2=0.98, weight_decay=0.01, grad_clip_norm=1.0)
IMPLEMENTATION = "reference"  # the model's default attention backend
PEAK_N = 2048


def jax_model(sizes: dict, implementation: str = IMPLEMENTATION, max_len: int | None = None):
  return build_model(dict(
      name="lm", vocab_size=sizes["vocab"], d_model=sizes["d_model"], num_heads=sizes["heads"],
      d_ff=sizes["d_ff"], num_layers=sizes["layers"], dropout_rate=0.0,
      max_len=max_len or sizes["length"], implementation=implementation,
      dtype=harness.compute_dtype()))


def make_batch(sizes: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Next-token prediction on random tokens, in the LM task's batch format."""
  rng = np.random.default_rng(seed)
  b, t = sizes["batch"], sizes["length"]
  tokens = rng.integers(4, sizes["vocab"], size=(b, t + 1)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "target_lengths": np.full((b,), t, np.int32), "weights": np.ones((b,), np.float32)}


def jax_state(sizes: dict, batch: dict, implementation: str = IMPLEMENTATION, seed: int = 0):
  """(model, TrainState with our AdamW, jitted train step with the state donated)."""
  task = tasks.LMTask(jax_model(sizes, implementation), None, seq_len=sizes["length"])
  variables = task.init(jax.random.key(seed), batch)
  tx, _ = optim.make_optimizer(OPTIM, total_steps=1)
  state = steps.TrainState.create(apply_fn=task.model.apply,
                                  params=nn.meta.unbox(variables["params"]), tx=tx)
  train = jax.jit(functools.partial(steps.train_step, loss_fn=task.loss), donate_argnums=0)
  return task.model, state, train


def non_embedding_params(params) -> int:
  """N: every parameter but the token embedding (positions are a fixed table here)."""
  total = sum(x.size for x in jax.tree.leaves(params))
  return total - params["embed"]["table"]["embedding"].size


def model_flops_per_token(sizes: dict, n: int) -> float:
  head_dim = sizes["d_model"] // sizes["heads"]
  return 6 * n + 12 * sizes["layers"] * sizes["heads"] * head_dim * sizes["length"]


def hardware_flops_per_token(sizes: dict, n: int) -> float:
  """Model FLOPs plus the tied output projection's forward and backward."""
  return model_flops_per_token(sizes, n) + 6 * sizes["d_model"] * sizes["vocab"]


def torch_peer(sizes: dict, params):
  import torch
  from bench import torch_lm
  model = torch_lm.TorchLM(sizes["vocab"], sizes["d_model"], sizes["heads"], sizes["d_ff"],
                           sizes["layers"], sizes["length"])
  torch_lm.load_flax_params(model, jax.device_get(params))
  opt = torch.optim.AdamW(model.parameters(), lr=OPTIM["learning_rate"],
                          betas=(OPTIM["b1"], OPTIM["b2"]), weight_decay=OPTIM["weight_decay"])
  return model, opt


def torch_train_step(model, opt, tokens, targets):
  import torch
  from bench import torch_lm
  opt.zero_grad(set_to_none=True)
  loss = torch_lm.loss_fn(model, tokens, targets)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM["grad_clip_norm"])
  opt.step()
  return loss


def matmul_peak(repeats: int, n: int | None = None) -> tuple[list[harness.Row], float]:
  """n^3 matmul in both frameworks (JAX alone without torch) in `harness.compute_dtype()`;
  the rows and the peak FLOP/s (best of both). n: 2048 on a CPU, 8192 on an accelerator
  (2048 would not fill it)."""
  n = n or (PEAK_N if harness.on_cpu() else 4 * PEAK_N)
  dtype = harness.compute_dtype()
  rng = np.random.default_rng(0)
  a, b = (rng.standard_normal((n, n), dtype=np.float32) for _ in range(2))
  ja, jb = jnp.asarray(a, dtype), jnp.asarray(b, dtype)
  matmul = jax.jit(jnp.matmul)
  fns = {"jax": lambda: matmul(ja, jb).block_until_ready()}
  if harness.have_torch():
    import torch
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    fns["torch"] = lambda: torch.matmul(ta, tb)
  times = harness.measure(fns, repeats=max(repeats, 5), warmup=2)
  flops = 2.0 * n ** 3
  rows, peak = [], 0.0
  for impl in times:
    base = "torch" if impl == "jax" and "torch" in times else None
    best = flops / min(times[impl])
    peak = max(peak, best)
    label = f"matmul {n}^3 {jnp.dtype(dtype).name}"
    rows.append(harness.Row(NAME, label, impl, times[impl], base,
                            {"gflops": flops / float(np.median(times[impl])) / 1e9}))
  return rows, peak


def run(repeats: int, budget_s: float, implementations=(IMPLEMENTATION,),
        peak: tuple[list[harness.Row], float] | None = None) -> list[harness.Row]:
  """The rows: the matmul peak (`peak`, if measured already in this run) and the step."""
  rows, peak = peak or matmul_peak(repeats)
  rows = list(rows)
  batch = make_batch(SIZES)
  fns, holders = {}, {}
  params = None
  for impl in implementations:
    rng = jax.random.key(0)
    try:
      _, state, train = jax_state(SIZES, batch, impl)
      params = params or jax.device_get(state.params)
      state, _ = train(state, batch, rng)  # compiles here
    except Exception as e:  # pylint: disable=broad-except
      if impl == IMPLEMENTATION:
        raise
      # A device kernel this platform cannot build: reported, the others timed.
      rows.append(harness.Row(NAME, "train step", f"jax {impl} train_step", [], None,
                              {"skipped": harness.skip_note(e)}))
      continue
    holder = holders[impl] = {"state": state}

    def ours(holder=holder, train=train):
      holder["state"], metrics = train(holder["state"], batch, rng)
      jax.block_until_ready(metrics["loss"])

    fns[f"jax {impl}"] = ours
  if harness.have_torch():
    import torch
    tokens = torch.from_numpy(batch["inputs"]).long()
    targets = torch.from_numpy(batch["targets"]).long()
    t_model, opt = torch_peer(SIZES, params)
    fns["torch"] = lambda: torch_train_step(t_model, opt, tokens, targets)
  times = harness.measure(fns, repeats=repeats, warmup=2, budget_s=budget_s)
  n = non_embedding_params(params)
  tokens_per_step = SIZES["batch"] * SIZES["length"]
  for impl, t in times.items():
    median = float(np.median(t))
    model_flops = model_flops_per_token(SIZES, n) * tokens_per_step / median
    hw_flops = hardware_flops_per_token(SIZES, n) * tokens_per_step / median
    rows.append(harness.Row(
        NAME, "train step", impl if impl == "torch" else f"{impl} train_step", t,
        "torch" if impl != "torch" and "torch" in times else None,
        {"tokens_per_s": tokens_per_step / median, "mfu": model_flops / peak,
         "hfu": hw_flops / peak, "peak_gflops": peak / 1e9, "non_embedding_params": n}))
  return rows
