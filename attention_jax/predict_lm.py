"""`attention_jax.predict` for the lm task: each input is a prompt, the prediction its
continuation, and the score log p(continuation | prompt), EOS included when it came.

Prompts differ in length and the task decodes one prompt length per batch, so each
prompt is a batch of its own.
"""
from __future__ import annotations

import jax
import numpy as np

from attention_jax.data.vocab import EOS_ID
from attention_jax.predict_io import PredictError, until_eos


def continuation_log_prob(task, params, prompt: list[int], continuation: list[int]) -> float:
  """log p(continuation | prompt), teacher-forced: one forward pass over both."""
  tokens = np.asarray([prompt + continuation], np.int32)
  logits = np.asarray(task.model.apply({"params": params}, tokens[:, :-1]), np.float64)[0]
  logp = logits - logits.max(-1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
  rows = np.arange(len(prompt) - 1, tokens.shape[1] - 1)  # the positions that predict it
  return float(logp[rows, tokens[0, rows + 1]].sum())


def predict_one(task, params, text: str, *, method: str, max_len: int, temperature: float,
                rng: jax.Array) -> dict:
  """The result of continuing `text` (the `predict` result shape: input, prediction, score,
  nbest of one)."""
  prompt = task.dataset.target_vocab.encode(text)
  if not prompt:
    raise PredictError("an empty prompt: the lm continues text; give at least one symbol")
  budget = max_len or min(task.default_decode_len("dev", len(prompt)), 4 * task.seq_len)
  try:
    ids = task.predict(params, {"inputs": np.asarray([prompt], np.int32)}, method=method,
                       max_len=budget, rng=rng, temperature=temperature, prompt_len=len(prompt))
  except ValueError as e:  # prompt past task.seq_len, or prompt + budget past the table
    raise PredictError(f"input {text!r} ({len(prompt)} tokens): {e}") from None
  continuation, finished = until_eos(np.asarray(ids)[0])
  score = continuation_log_prob(task, params, prompt,
                                continuation + ([EOS_ID] if finished else []))
  hypothesis = {"prediction": task.text(continuation), "score": score}
  return {"input": text, **hypothesis, "nbest": [hypothesis]}
