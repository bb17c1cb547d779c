"""Text to text with an encoder-decoder (RNN or Transformer), trained with teacher forcing.

Batches are the `data.pipeline` dicts: `inputs [B,S]`, `input_lengths [B]`,
`decoder_inputs [B,T]` (BOS-shifted), `targets [B,T]`, `target_lengths [B]`,
`weights [B]` (0 on padding rows), `index [B]` (record, -1 on padding rows).
With hard attention (Xu et al. 2015) trained by REINFORCE, the loss adds the
surrogate of `attention.hard`: reward = -NLL of each sequence (or, with
`reinforce_credit='step'`, of the tokens from each step on), baseline = the mean
reward of the other sequences of the batch (leave-one-out: unbiased), minus
`entropy_bonus` times the attention's mean entropy per token (Xu et al.'s lambda_e).
The straight-through estimator (`model.hard_estimator='gumbel'`) needs no surrogate.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import decode
from attention_jax.attention import hard
from attention_jax.data import pipeline as data_pipeline
from attention_jax.data.vocab import BOS_ID, EOS_ID
from attention_jax.evaluate import metrics as metrics_lib
from attention_jax.tasks import base
from attention_jax.viz import heatmaps

Array = jax.Array


CREDITS = ("sequence", "step")


def entropy(weights: Array) -> Array:
  """float32 `[..., T]`: -sum_i alpha_i log alpha_i (0 log 0 = 0)."""
  weights = weights.astype(jnp.float32)
  logs = jnp.log(jnp.where(weights > 0, weights, 1.0))
  return -jnp.sum(weights * logs, axis=-1)


def _leave_one_out(reward: Array, valid: Array) -> Array:
  """Each row's baseline: the mean reward of the other valid rows (per column if 2-D)."""
  n = jnp.maximum(jnp.sum(valid, axis=0), 2.0)
  return (jnp.sum(reward * valid, axis=0) - reward) / (n - 1.0)


def reinforce_loss(log_prob: Array, nll: Array, mask: Array, rows: Array, tokens: Array,
                   credit: str = "sequence") -> Array:
  """The REINFORCE surrogate per target token: `log_prob`, `nll`, `mask` `[B, T]`, `rows [B]`.

  credit 'sequence': every choice of a row is rewarded by the row's log-likelihood.
  credit 'step': the choice at step t by the log-likelihood of tokens t, t+1, ... (those
  it can still affect; earlier ones add only variance), with a per-step baseline.
  Both baselines are leave-one-out means over the batch's other rows.
  """
  if credit == "sequence":
    reward = -jnp.sum(nll * mask, axis=1)  # [B]
    baseline = _leave_one_out(reward, rows)
    surrogate = hard.reinforce_surrogate(jnp.sum(log_prob * mask, axis=1), reward, baseline)
    return jnp.sum(surrogate * rows) / tokens
  valid = mask * rows[:, None]  # [B, T]
  to_go = -jnp.flip(jnp.cumsum(jnp.flip(nll * mask, 1), axis=1), 1)  # [B, T]
  surrogate = hard.reinforce_surrogate(log_prob, to_go, _leave_one_out(to_go, valid))
  return jnp.sum(surrogate * valid) / tokens


@functools.partial(jax.jit, static_argnames=("model", "method", "beam_size", "alpha", "max_len"))
def _decode(params, inputs: Array, input_lengths: Array, *, model, method: str, beam_size: int,
            alpha: float, max_len: int) -> Array:
  """Token ids `[batch, max_len]` decoded greedily or by beam search (best beam), or with
  method 'beams' every beam `[batch, beam_size, max_len]`, best first (n-best lists)."""
  variables = {"params": params}
  encoded = model.apply(variables, inputs, input_lengths, method=model.encode)
  state = model.apply(variables, encoded, input_lengths, method=model.init_decode_state)
  step = lambda s, t: model.apply(variables, s, t, method=model.decode_step)
  return search(step, state, inputs.shape[0], method=method, beam_size=beam_size, alpha=alpha,
                max_len=max_len)


def search(step, state, batch: int, *, method: str, beam_size: int, alpha: float,
           max_len: int) -> Array:
  """Greedy or beam decoding of `step` from `state`: ids `[batch, max_len]` (the best beam),
  or with method 'beams' every beam `[batch, beam_size, max_len]`."""
  if method in ("beam", "beams"):
    beams = decode.beam_search(step, state, batch, beam_size=beam_size, bos_id=BOS_ID,
                               eos_id=EOS_ID, max_len=max_len, alpha=alpha)[0]
    return beams if method == "beams" else beams[:, 0]
  return decode.greedy(step, state, batch, bos_id=BOS_ID, eos_id=EOS_ID, max_len=max_len)


def _tokens(vocab, ids) -> list[str]:
  """Per-position token strings of one sequence, up to and including EOS."""
  out = []
  for i in np.asarray(ids):
    out.append({EOS_ID: "</s>", BOS_ID: "<s>"}.get(int(i)) or vocab.decode([i]))
    if i == EOS_ID:
      break
  return out


def output_log_probs(logits: Array, batch: dict, finished: Sequence[bool]) -> np.ndarray:
  """log p(targets) `[B]` from teacher-forced logits, summed over the real target tokens.
  An output cut at the decode budget (`finished` False) has no EOS: the pipeline's is left
  out of its sum."""
  batch = dict(batch, target_lengths=batch["target_lengths"] - 1 + np.asarray(finished, np.int32))
  nll, _ = base.cross_entropy(logits, jnp.asarray(batch["targets"]), 0.0)
  return -np.asarray(jnp.sum(nll * base.token_mask(batch), axis=1))


class Seq2SeqTask(base.Task):
  """`model(inputs, input_lengths, decoder_inputs) -> logits` and the decoding interface."""

  name = "seq2seq"
  decodes = ("greedy", "beam")

  def __init__(self, model, dataset, *, label_smoothing: float = 0.0,
               reinforce_credit: str = "sequence", entropy_bonus: float = 0.0):
    self.model, self.dataset = model, dataset
    self.label_smoothing = label_smoothing
    self.hard = getattr(model, "attention", None) == "hard"
    if reinforce_credit not in CREDITS:
      raise ValueError(f"task.reinforce_credit={reinforce_credit!r} is unknown; known: "
                       f"{', '.join(CREDITS)}")
    self.reinforce_credit = reinforce_credit
    self.entropy_bonus = float(entropy_bonus)
    if self.entropy_bonus and not self.hard:
      raise ValueError("task.entropy_bonus is for model.attention='hard' (Xu et al.'s recipe)")

  def example_batch(self, batch_size: int, length: int = 8) -> dict[str, np.ndarray]:
    ids = np.full((batch_size, length), 4, np.int32)
    lengths = np.full((batch_size,), length, np.int32)
    return {"inputs": ids, "input_lengths": lengths, "decoder_inputs": ids, "targets": ids,
            "target_lengths": lengths, "weights": np.ones((batch_size,), np.float32),
            "index": np.arange(batch_size, dtype=np.int32)}

  def init(self, rng, batch):
    return self.model.init(rng, batch["inputs"], batch["input_lengths"], batch["decoder_inputs"])

  def apply(self, params, batch, *, rngs=None, train=False, mutable=()):
    return self.model.apply({"params": params}, batch["inputs"], batch["input_lengths"],
                            batch["decoder_inputs"], deterministic=not train, rngs=rngs,
                            mutable=list(mutable) or False)

  def loss(self, params, batch, rng, *, train):
    loss, sums, mask, sown = self._token_loss(params, batch, rng, train)
    tokens = jnp.maximum(sums["tokens"], 1.0)
    if "intermediates" in sown:  # Xu et al.'s entropy bonus on the weights sampled from
      weights = sown["intermediates"]["attention_weights"][0]
      loss = loss - self.entropy_bonus * jnp.sum(entropy(weights) * mask) / tokens
    return loss, (base.means(sums) if train else sums)

  def _token_loss(self, params, batch, rng, train: bool):
    """(loss, sums, target mask, sown collections): the cross-entropy per target token
    plus, for hard attention trained by REINFORCE, its surrogate. Subclasses add terms."""
    rngs = None
    if rng is not None:
      rngs = {"dropout": jax.random.fold_in(rng, 0), "sample": jax.random.fold_in(rng, 1)}
    mutable = self._mutable(train)
    out = self.apply(params, batch, rngs=rngs, train=train, mutable=mutable)
    logits, sown = out if mutable else (out, {})
    loss, sums, (nll, mask) = base.token_losses(logits, batch, self.label_smoothing)
    if "log_prob" in sown.get("reinforce", {}):
      loss = loss + reinforce_loss(sown["reinforce"]["log_prob"][0], nll, mask,
                                   batch["weights"], jnp.maximum(sums["tokens"], 1.0),
                                   self.reinforce_credit)
    return loss, sums, mask, sown

  def _mutable(self, train: bool) -> tuple[str, ...]:
    # Only what the loss reads: asking for 'intermediates' would make every attention layer
    # compute its weights explicitly, in the hot path.
    if not (self.hard and train):
      return ()
    return ("reinforce",) + (("intermediates",) if self.entropy_bonus else ())

  def batches(self, split, *, batch_size, seed=0, train=False, indices=None):
    return data_pipeline.make_pipeline(self.dataset, split, batch_size=batch_size, seed=seed,
                                       train=train, indices=indices)

  def num_examples(self, split: str) -> int:
    return self.dataset.splits[split]

  def metric_names(self, scorers: str) -> list[str]:
    return ["loss", "nll", "accuracy", *metrics_lib.scored_metrics(scorers)]

  def check_data(self) -> None:
    if getattr(self.dataset, "feature_dim", None):
      raise ValueError(f"data.name={self.dataset.name!r} has feature frames, not text: use "
                       "task.name='speech' (experiments/speech_digits.py)")

  def decode_limit(self) -> int | None:
    """The Transformer's positional table and KV cache; the RNN has no limit."""
    return self.model.max_decode_len

  def default_decode_len(self, split: str, prompt_len: int = 0) -> int:
    """The split's longest reference with EOS, plus half again (at least 4): room for an
    output longer than its reference, cut at the model's limit."""
    del prompt_len
    longest = self.dataset.max_lengths(split)[1] + 1
    self.check_decode_len(longest, f"the longest target of {split} (with EOS)")
    budget = longest + max(4, longest // 2)
    return min(budget, self.decode_limit() or budget)

  def predict(self, params, batch, *, method: str = "greedy", max_len: int, beam_size: int = 4,
              alpha: float = 0.6, all_beams: bool = False, rng=None, **_) -> Array:
    """Decoded ids `[B, max_len]` (EOS, then pads); with beam search and `all_beams`, every
    beam `[B, beam_size, max_len]`, best first."""
    del rng
    self.check_decode_len(max_len, "the decode length")
    method = "beams" if method == "beam" and all_beams else method
    return _decode(params, batch["inputs"], batch["input_lengths"], model=self.model,
                   method=method, beam_size=beam_size, alpha=alpha, max_len=max_len)

  def output_scores(self, params, batch: dict, finished: Sequence[bool]) -> np.ndarray:
    """log p(targets | inputs) `[B]`, teacher-forced (predict's score)."""
    return output_log_probs(self.apply(params, batch), batch, finished)

  def text(self, ids) -> str:
    return self.dataset.target_vocab.decode(ids)

  def examples(self, split: str, batch: dict, **_) -> list[dict]:
    """The records of the batch's real rows (source and every reference)."""
    texts = self.dataset.texts(split)
    return [texts[i] for i in batch["index"] if i >= 0]

  def score(self, predictions: Sequence[str], examples: Sequence[dict], scorers: str) -> dict:
    vocab = self.dataset.target_vocab
    return metrics_lib.score(scorers, predictions, [e["references"] for e in examples],
                             getattr(vocab, "split", str.split))

  def show(self, example: dict, prediction: str) -> str:
    return f"{example['inputs']!r} -> {prediction!r} (reference {example['references'][0]!r})"

  def record(self, example: dict, prediction: str) -> dict:
    """One line of `predictions_<evaluator>.jsonl`."""
    return {"source": example["inputs"], "prediction": prediction,
            "references": example["references"],
            "correct": prediction in example["references"]}

  def heatmap_figures(self, params, batch: dict, n: int, step: int) -> dict:
    """Teacher-forced attention of the batch's first `n` rows, one figure per kind and row
    (none for a model without attention)."""
    rows = {k: np.asarray(v)[:n] for k, v in batch.items()}
    _, inter = self.intermediates(params, rows)
    if not inter:
      return {}
    sources = [_tokens(self.dataset.input_vocab, r) for r in rows["inputs"]]
    targets = [_tokens(self.dataset.target_vocab, r) for r in rows["targets"]]
    return heatmaps.example_figures(inter, sources, targets, step=step,
                                    decoder_input_tokens=[["<s>"] + t[:-1] for t in targets])
