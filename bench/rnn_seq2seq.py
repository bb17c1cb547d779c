"""Benchmark 2: one training step of an attention RNN encoder-decoder, ours vs PyTorch.

Forward + backward + Adam (global-norm clipping at 1, as our configs do) of a
one-layer GRU / LSTM encoder-decoder, embeddings 256, hidden 512, batch 64,
source and target length 30, vocabulary 1000, with Bahdanau (additive) or
Luong (dot, input feeding) attention. Ours is `RNNSeq2Seq` trained by
`train.steps.train_step` over `tasks.Seq2SeqTask`'s loss with the optimizer of `train.optim`, jitted with the
state donated, as the trainer does; the peer is `bench/torch_rnn.py`.
"""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import numpy as np

from attention_jax import tasks
from attention_jax.models.registry import build_model
from attention_jax.train import optim, steps
from bench import harness

NAME = "rnn_attention_seq2seq"
SIZES = dict(vocab=1000, embed=256, hidden=512, batch=64, src_len=30, tgt_len=30)
VARIANTS = {"bahdanau": "additive", "luong": "dot"}  # attention -> score
CELLS = ("gru", "lstm")
OPTIM = dict(name="adam", learning_rate=1e-3, warmup_steps=0, schedule="constant", b1=0.9,
             b2=0.999, weight_decay=0.0, grad_clip_norm=1.0)


def train_flops(sizes: dict, cell: str, attention: str) -> float:
  """Matmul FLOPs of one training step: 3x the forward's (backward = 2 x forward).

  The forward: encoder and decoder input projections and recurrences, the
  decoder's extra input (context or fed-back vector), attention (scores and
  context; Bahdanau adds W_q s per step and W_k h once), the output combine
  layer and the readout; elementwise work is left out.
  """
  b, s, t = sizes["batch"], sizes["src_len"], sizes["tgt_len"]
  e, h, v = sizes["embed"], sizes["hidden"], sizes["vocab"]
  gates = (3 if cell == "gru" else 4) * h
  forward = 2 * b * (s * (e + h) * gates + t * (e + 2 * h) * gates  # encoder; decoder
                     + 2 * t * s * h + t * 2 * h * h + t * h * v)  # attention; combine; readout
  if attention == "bahdanau":
    forward += 2 * b * (t * h * h + s * h * h)  # W_q s_{t-1} per step, W_k h_j once
  return 3.0 * forward


def make_batch(sizes: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """A batch in the data pipeline's format; every sequence is full length."""
  rng = np.random.default_rng(seed)
  b, s, t, v = sizes["batch"], sizes["src_len"], sizes["tgt_len"], sizes["vocab"]
  targets = rng.integers(4, v, size=(b, t)).astype(np.int32)
  decoder_inputs = np.concatenate([np.ones((b, 1), np.int32), targets[:, :-1]], axis=1)  # BOS=1
  return {"inputs": rng.integers(4, v, size=(b, s)).astype(np.int32),
          "input_lengths": np.full((b,), s, np.int32), "decoder_inputs": decoder_inputs,
          "targets": targets, "target_lengths": np.full((b,), t, np.int32),
          "weights": np.ones((b,), np.float32)}


def jax_model(sizes: dict, cell: str, attention: str):
  return build_model(dict(
      name="rnn_seq2seq", vocab_size=sizes["vocab"], attention=attention,
      score=VARIANTS[attention], cell=cell, src_embed_dim=sizes["embed"],
      tgt_embed_dim=sizes["embed"], hidden_dim=sizes["hidden"], dropout_rate=0.0))


def jax_state(sizes: dict, cell: str, attention: str, batch: dict, seed: int = 0):
  """(model, TrainState with our optimizer, jitted train step with the state donated)."""
  model = jax_model(sizes, cell, attention)
  variables = model.init(jax.random.key(seed), batch["inputs"], batch["input_lengths"],
                         batch["decoder_inputs"])
  tx, _ = optim.make_optimizer(OPTIM, total_steps=1)
  state = steps.TrainState.create(apply_fn=model.apply, params=nn.meta.unbox(variables["params"]),
                                  tx=tx)
  task = tasks.Seq2SeqTask(model, None)
  train = jax.jit(functools.partial(steps.train_step, loss_fn=task.loss), donate_argnums=0)
  return model, state, train


def torch_peer(sizes: dict, cell: str, attention: str, params):
  """The peer model with our parameters, its Adam, and the batch as tensors."""
  import torch
  from bench import torch_rnn
  model = torch_rnn.TorchRNNSeq2Seq(sizes["vocab"], sizes["embed"], sizes["hidden"], cell,
                                    attention)
  torch_rnn.load_flax_params(model, jax.device_get(params))
  opt = torch.optim.Adam(model.parameters(), lr=OPTIM["learning_rate"],
                         betas=(OPTIM["b1"], OPTIM["b2"]))
  return model, opt


def torch_train_step(model, opt, batch) -> float:
  import torch
  from bench import torch_rnn
  opt.zero_grad(set_to_none=True)
  loss = torch_rnn.loss_fn(model, batch)
  loss.backward()
  torch.nn.utils.clip_grad_norm_(model.parameters(), OPTIM["grad_clip_norm"])
  opt.step()
  return loss


def run(repeats: int, budget_s: float) -> list[harness.Row]:
  rows, peer = [], harness.have_torch()
  batch = make_batch(SIZES)
  if peer:
    import torch
    torch_batch = {k: torch.from_numpy(v).long() for k, v in batch.items()
                   if k in ("inputs", "decoder_inputs", "targets")}
  for attention in VARIANTS:
    for cell in CELLS:
      _, state, train = jax_state(SIZES, cell, attention, batch)
      if peer:
        t_model, opt = torch_peer(SIZES, cell, attention, state.params)
      rng = jax.random.key(0)
      holder = {"state": state}

      def ours():
        holder["state"], metrics = train(holder["state"], batch, rng)
        jax.block_until_ready(metrics["loss"])

      fns = {"jax": ours}
      if peer:
        fns["torch"] = lambda: torch_train_step(t_model, opt, torch_batch)
      times = harness.measure(fns, repeats=repeats, warmup=2, budget_s=budget_s)
      case = f"{cell.upper()} {attention} ({VARIANTS[attention]})"
      tokens = SIZES["batch"] * SIZES["tgt_len"]
      labels = {"jax": ("jax train_step", "torch loop" if peer else None),
                "torch": ("torch loop", None)}
      for impl, (label, base) in ((impl, labels[impl]) for impl in times):
        median = float(np.median(times[impl]))
        rows.append(harness.Row(NAME, case, label, times[impl], base, {
            "target_tokens_per_s": tokens / median,
            "gflops": train_flops(SIZES, cell, attention) / median / 1e9}))
      del holder
  return rows
