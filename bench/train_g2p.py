"""Benchmark: the G2P experiments' training step at their real sizes, ours vs PyTorch.

`train_g2p_rnn`: the default `experiments/g2p_attention.py` (bidirectional
LSTM, hidden 128, Luong general, dropout 0.1, batch 64) and its `converged`
hidden-256 model (Luong location, embeddings 128, dropout 0.2, no stress).
`train_g2p_transformer`: `experiments/g2p_transformer.py` (d_model 128,
4 heads, 3+3 layers, label smoothing 0.1). Both sides train on the same real
batches, read from the data pipeline before the timing starts (bucketed, so
they differ in length; every shape is compiled in the warm-up): ours is the
trainer's jitted `train_step` with the state donated, the peer its PyTorch
model with our initial weights (`bench/torch_rnn.py`,
`bench/torch_transformer.py`; tests/bench checks they compute our loss and
gradients), dropout on in both. One timed call runs every batch once; the
table gives seconds per step.

`loop_overhead` runs the trainer itself (`python -m attention_jax.main`) on the
default config for 500 steps, with an evaluation at the middle, and compares its
time per step, from the run's own `elapsed_s` (after the first log window, which
compiles), with and without that evaluation, to the step alone on the very batches
the trainer took in that span (its seed's stream: 14% of them have 32-letter inputs,
against 1 in the 16 batches of the rows above, so those rows' step is not this
denominator); it also counts the programs the run compiles.
"""
from __future__ import annotations

import functools
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import flax.linen as nn
import jax
import numpy as np

from attention_jax import data, experiment, tasks
from attention_jax.train import optim, steps
from bench import harness

NAMES = {"rnn": "train_g2p_rnn", "transformer": "train_g2p_transformer"}
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BATCHES = 16  # real batches per timed call
CONVERGED = {"model.hidden_dim": 256, "model.src_embed_dim": 128, "model.tgt_embed_dim": 128,
             "model.dropout_rate": 0.2}  # with score=location,stress=False
CASES = {  # benchmark -> case -> (experiment file, argument string, config overrides)
    "rnn": {"default (hidden 128)": ("g2p_attention.py", "", {}),
            "converged (hidden 256)": (
                "g2p_attention.py", "score=location,stress=False",
                CONVERGED)},
    "transformer": {"base (d_model 128)": ("g2p_transformer.py", "", {})},
}


def load_config(name: str, arg: str = "", overrides: dict | None = None):
  config = experiment.load(os.path.join(ROOT, "experiments", name)).get_config(arg or None)
  for key, value in (overrides or {}).items():
    section, field = key.split(".")
    config[section][field] = value
  return config


def real_batches(task, config, count: int) -> list[dict[str, np.ndarray]]:
  it = iter(task.batches("train", batch_size=config.data.batch_size, seed=0, train=True))
  return [next(it) for _ in range(count)]


def jax_side(task, config):
  """(state, jitted train step with the state donated), as the trainer builds them."""
  tx, schedule = optim.make_optimizer(config.optim, config.train.steps)
  params = jax.jit(lambda r: nn.meta.unbox(task.init(r, task.example_batch(8))["params"]))(
      jax.random.key(0))
  state = steps.TrainState.create(apply_fn=task.model.apply, params=params, tx=tx)
  train = jax.jit(functools.partial(steps.train_step, loss_fn=task.loss, schedule=schedule),
                  donate_argnums=0)
  return state, train


def rnn_peer(model: dict, params):
  """The PyTorch peer of our `RNNSeq2Seq` built from `model` (its config), with `params`."""
  from bench import torch_rnn
  peer = torch_rnn.TorchRNNSeq2Seq(
      params["readout"]["kernel"].shape[1], model["src_embed_dim"], model["hidden_dim"],
      model["cell"], model["attention"], score=model["score"],
      src_vocab_size=params["src_embed"]["embedding"].shape[0],
      tgt_embed_dim=model["tgt_embed_dim"], bidirectional=model["bidirectional"],
      dropout=model["dropout_rate"], max_len=model["max_len"])
  return torch_rnn.load_flax_params(peer, jax.device_get(params))


def torch_side(config, model, params):
  """(peer of our `model` in train mode, its optimizer (ours is AdamW), its loss function)."""
  import torch
  if config.model.name == "transformer":
    from bench import torch_transformer
    m = config.model
    sizes = dict(src_vocab=model.src_vocab_size, vocab=model.vocab_size, d_model=m.d_model,
                 heads=m.num_heads, d_ff=m.d_ff, layers=m.num_layers, max_len=m.max_len,
                 dropout=m.dropout_rate)
    peer, opt = torch_transformer.make_peer(sizes, jax.device_get(params), dict(config.optim),
                                            config.train.steps)
    return peer, opt, torch_transformer.loss_fn
  from bench import torch_rnn
  peer, o = rnn_peer(config.model, params), config.optim
  opt = torch.optim.AdamW(peer.parameters(), lr=o.learning_rate, betas=(o.b1, o.b2),
                          weight_decay=o.weight_decay)
  return peer.train(), opt, torch_rnn.loss_fn


def torch_steps(config, task, params, batches):
  """A function that runs the peer's training step once on each of `batches`."""
  import torch
  model, opt, loss_fn = torch_side(config, task.model, params)
  smoothing = config.task.get("label_smoothing", 0.0)
  from bench import torch_transformer  # its batch conversion serves both peers
  torch_batches = [torch_transformer.to_torch_batch(b) for b in batches]

  def steps_once():
    for batch in torch_batches:
      opt.zero_grad(set_to_none=True)
      loss_fn(model, batch, label_smoothing=smoothing).backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip_norm)
      opt.step()

  return steps_once


def run(family: str, repeats: int, budget_s: float) -> list[harness.Row]:
  """The rows of `train_g2p_<family>` (family 'rnn' or 'transformer')."""
  rows = []
  for case, spec in CASES[family].items():
    config = load_config(*spec)
    dataset = data.from_config(config.data)
    task = tasks.build_task(config, dataset)
    batches = real_batches(task, config, BATCHES)
    state, train = jax_side(task, config)
    fns, holder, rng = {}, {"state": state}, jax.random.key(1)

    def ours():
      for batch in batches:
        holder["state"], metrics = train(holder["state"], batch, rng)
      jax.block_until_ready(metrics["loss"])

    fns["jax"] = ours
    if harness.have_torch():
      fns["torch"] = torch_steps(config, task, state.params, batches)
    times = harness.measure(fns, repeats=repeats, warmup=2, budget_s=budget_s)
    tokens = float(np.mean([b["target_lengths"].sum() for b in batches]))
    labels = {"jax": ("jax train_step", "torch" if "torch" in times else None),
              "torch": ("torch", None)}
    for impl, (label, base) in ((impl, labels[impl]) for impl in times):
      per_step = [t / BATCHES for t in times[impl]]
      rows.append(harness.Row(NAMES[family], case, label, per_step, base, {
          "steps_per_s": 1.0 / float(np.median(per_step)),
          "target_tokens_per_s": tokens / float(np.median(per_step))}))
  return rows


def step_only_s(first: int, last: int) -> float:
  """Seconds per step of the default config's jitted train step alone over batches
  `first + 1` to `last` of the trainer's own stream (seed 0), each shape compiled first."""
  config = load_config("g2p_attention.py")
  task = tasks.build_task(config, data.from_config(config.data))
  batches = real_batches(task, config, last)[first:]
  state, train = jax_side(task, config)
  rng, shapes = jax.random.key(1), {}
  for batch in batches:  # compile (or load) every bucket shape before the clock starts
    shapes.setdefault(tuple(v.shape for v in batch.values()), batch)
  for batch in shapes.values():
    state, metrics = train(state, batch, rng)
  jax.block_until_ready(metrics["loss"])
  start = time.perf_counter()
  for batch in batches:
    state, metrics = train(state, batch, rng)
  jax.block_until_ready(metrics["loss"])
  return (time.perf_counter() - start) / len(batches)


def loop_overhead(steps_run: int = 500, log_every: int = 50) -> harness.Row:
  """The trainer's seconds per step over `steps_run` steps of the default config, against
  the step alone on the same batches (`step_only_s`): with data loading, logging and one
  evaluation (at the middle; the one at the end comes after the last train row), and
  without the evaluation (the sum of the log windows' own times, which leave evaluations
  out)."""
  with tempfile.TemporaryDirectory() as workdir:
    command = [sys.executable, "-m", "attention_jax.main",
               f"--config={os.path.join(ROOT, 'experiments', 'g2p_attention.py')}",
               f"--workdir={workdir}", f"--config.train.steps={steps_run}",
               f"--config.train.log_every={log_every}",
               f"--config.evals.dev.every={steps_run // 2}",
               f"--config.train.checkpoint_every={steps_run}"]
    # JAX_LOG_COMPILES: one "Compiling jit(name)" line per program compiled (or loaded
    # from the persistent cache): one train_step per bucket shape the batches bring.
    proc = subprocess.run(command, cwd=ROOT, check=True, capture_output=True, text=True,
                          env=dict(os.environ, JAX_LOG_COMPILES="1"))
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  compiled = re.findall(r"Compiling jit\((\w+)\)", proc.stderr)
  train = [r for r in rows if r["split"] == "train"]
  first, last = train[0], train[-1]  # the first window compiles: left out
  steps = last["step"] - first["step"]
  loop_s = (last["elapsed_s"] - first["elapsed_s"]) / steps
  windows_s = sum((b["step"] - a["step"]) / b["steps_per_s"] for a, b in zip(train, train[1:]))
  inside = [r for r in rows if r["split"] != "train" and first["step"] < r["step"] < last["step"]]
  step_s = step_only_s(first["step"], last["step"])
  return harness.Row(NAMES["rnn"], f"trainer loop, {steps_run} steps",
                     "python -m attention_jax.main", [loop_s], None, {
                         "steps_per_s": 1.0 / loop_s, "step_only_ms": 1e3 * step_s,
                         "overhead": f"{100 * (loop_s / step_s - 1):+.1f}%",
                         "overhead_no_eval": f"{100 * (windows_s / steps / step_s - 1):+.1f}%",
                         "evaluations": len(inside), "compilations": len(compiled),
                         "train_step_compilations": compiled.count("train_step")})
