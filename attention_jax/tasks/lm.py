"""Next-token prediction with the decoder-only Transformer (`models.DecoderOnlyLM`).

Batches are `data.lm_pipeline` windows of a split's packed token stream:
`inputs [B,S]`, `targets [B,S]` (the inputs shifted by one), `target_lengths [B]`,
`weights [B]`, `index [B]` (window, -1 on padding rows). An evaluator reports
the loss, perplexity exp(NLL) and bits per token NLL / ln 2 (per character for
a character vocabulary) over every real target position, and prints sampled
continuations of the first windows' openings.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from attention_jax import decode
from attention_jax.data import lm_pipeline
from attention_jax.data.vocab import BOS_ID, EOS_ID, SymbolVocabulary
from attention_jax.tasks import base
from attention_jax.viz import heatmaps

Array = jax.Array
HEATMAP_TOKENS = 48  # characters per drawn map: more and a grid of heads is unreadable


@functools.partial(jax.jit, static_argnames=("model", "method", "max_len", "temperature"))
def _continue(params, prompt: Array, rng: Array, *, model, method: str, max_len: int,
              temperature: float) -> Array:
  """Continuations `[B, max_len]` of `prompt [B, P]`: the prompt's first P - 1 tokens fill
  the KV cache one decode step at a time, the last is the first input of the decode loop."""
  variables = {"params": params}
  step = lambda s, t: model.apply(variables, s, t, method=model.decode_step)
  state = model.apply(variables, prompt.shape[0], method=model.init_decode_state)
  state = lax.scan(lambda s, t: (step(s, t)[1], None), state, prompt[:, :-1].T)[0]
  kw = dict(bos_id=BOS_ID, eos_id=EOS_ID, max_len=max_len, first_tokens=prompt[:, -1])
  if method == "greedy":
    return decode.greedy(step, state, prompt.shape[0], **kw)
  return decode.sample(step, state, prompt.shape[0], rng, temperature=temperature, **kw)


class LMTask(base.Task):
  """`model(tokens) -> next-token logits` and `decode_step` for sampling."""

  name = "lm"
  prompted = True
  decodes = ("sample", "greedy")

  def __init__(self, model, dataset, *, seq_len: int, label_smoothing: float = 0.0):
    self.model, self.dataset = model, dataset
    self.seq_len, self.label_smoothing = seq_len, label_smoothing

  def example_batch(self, batch_size: int) -> dict[str, np.ndarray]:
    ids = np.full((batch_size, self.seq_len), 4, np.int32)
    return {"inputs": ids, "targets": ids,
            "target_lengths": np.full((batch_size,), self.seq_len, np.int32),
            "weights": np.ones((batch_size,), np.float32),
            "index": np.arange(batch_size, dtype=np.int32)}

  def init(self, rng, batch):
    return self.model.init(rng, batch["inputs"])

  def apply(self, params, batch, *, rngs=None, train=False, mutable=()):
    return self.model.apply({"params": params}, batch["inputs"], deterministic=not train,
                            rngs=rngs, mutable=list(mutable) or False)

  def loss(self, params, batch, rng, *, train):
    rngs = None if rng is None else {"dropout": jax.random.fold_in(rng, 0)}
    logits = self.apply(params, batch, rngs=rngs, train=train)
    loss, sums, _ = base.token_losses(logits, batch, self.label_smoothing)
    return loss, (base.means(sums) if train else sums)

  def batches(self, split, *, batch_size, seed=0, train=False, indices=None):
    return lm_pipeline.make_lm_pipeline(self.dataset, split, batch_size=batch_size,
                                        seq_len=self.seq_len, seed=seed, train=train,
                                        indices=indices)

  def num_examples(self, split: str) -> int:
    return lm_pipeline.num_windows(self.dataset, split, self.seq_len)

  @property
  def _chars(self) -> bool:
    vocab = getattr(self.dataset, "target_vocab", None)  # no data set: a config check
    return isinstance(vocab, SymbolVocabulary) and vocab.mode == "chars"

  def finish(self, sums):
    out = super().finish(sums)
    out["perplexity"] = math.exp(min(out["nll"], 700.0))  # exp overflows past ~709
    out["bits_per_token"] = out["nll"] / math.log(2.0)
    if self._chars:  # one token per character (the EOS between records is one too)
      out["bits_per_char"] = out["bits_per_token"]
    return out

  def metric_names(self, scorers: str) -> list[str]:
    if scorers:
      raise ValueError(f"the lm task scores no decoded text; got scorers {scorers!r}")
    # Without the data set (the config check) a character vocabulary is still possible.
    chars = self._chars or self.dataset is None
    return ["loss", "nll", "accuracy", "perplexity", "bits_per_token",
            *(["bits_per_char"] if chars else [])]

  def decode_limit(self) -> int:
    return self.model.max_decode_len

  def default_decode_len(self, split: str, prompt_len: int = 0) -> int:
    """What the positional table has room for after the prompt."""
    return self.decode_limit() - prompt_len

  def predict(self, params, batch, *, method: str = "sample", max_len: int, rng=None,
              temperature: float = 1.0, prompt_len: int = 1, **_) -> Array:
    """Continuations `[B, max_len]` of each row's first `prompt_len` inputs."""
    if not 1 <= prompt_len <= self.seq_len:
      raise ValueError(f"prompt_len={prompt_len} must be in [1, {self.seq_len}] (task.seq_len)")
    self.check_decode_len(prompt_len + max_len, "prompt_len + max_len")
    rng = jax.random.key(0) if rng is None else rng
    return _continue(params, batch["inputs"][:, :prompt_len], rng, model=self.model,
                     method=method, max_len=max_len, temperature=temperature)

  def text(self, ids) -> str:
    return self.dataset.target_vocab.decode(ids)

  def examples(self, split: str, batch: dict, prompt_len: int = 1) -> list[dict]:
    rows = np.asarray(batch["inputs"])[np.asarray(batch["index"]) >= 0]
    return [{"prompt": self.text(r[:prompt_len])} for r in rows]

  def score(self, predictions: Sequence[str], examples: Sequence[dict], scorers: str) -> dict:
    del predictions, examples, scorers
    return {}

  def show(self, example: dict, prediction: str) -> str:
    return f"{example['prompt']!r} -> {prediction!r}"

  def record(self, example: dict, prediction: str) -> dict:
    return {"prompt": example["prompt"], "continuation": prediction}

  def heatmap_figures(self, params, batch: dict, n: int, step: int) -> dict:
    """Per layer x head causal self-attention of the first `n` windows' openings."""
    tokens = np.asarray(batch["inputs"])[:n, :HEATMAP_TOKENS]
    _, inter = self.intermediates(params, {"inputs": tokens})
    vocab = self.dataset.target_vocab
    labels = [[vocab.decode([int(t)]) if t != EOS_ID else "</s>" for t in row] for row in tokens]
    return heatmaps.example_figures(inter, None, labels, step=step)
