"""Every metric the evaluators report, with its direction, and the decoded-output scorers.

A metric's direction (is a higher value better?) is defined here once: the
trainer's best-step selection and `launch.report`'s best row both read it.
Scorers turn decoded strings into metrics; an evaluator names the ones it
runs in `config.evals.<name>.metrics` (comma-separated).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from attention_jax.evaluate.asr import asr_scores
from attention_jax.evaluate.g2p import g2p_scores, phoneme_error_rate
from attention_jax.evaluate.translation import bleu

# Metric -> True when higher is better. Losses and error rates are lower-is-better.
HIGHER_IS_BETTER = {
    "loss": False, "nll": False, "accuracy": True,  # teacher-forced, per token
    "ctc_loss": False,  # speech: -log p_ctc per target token
    "monotonic": True,  # speech: decoder steps whose attention peak does not move back
    "perplexity": False, "bits_per_token": False, "bits_per_char": False,  # language models
    "sequence_accuracy": True, "token_error_rate": False, "bleu": True,
    # "wer" has one name and one direction but two meanings: for the asr scorer it is the
    # word-level edit rate (edits / reference words), for g2p the fraction of wrong words.
    "wer": False, "per": False, "wer_no_stress": False, "per_no_stress": False,
    "cer": False,  # asr: character edits / reference characters, spaces included
    # image2seq, descriptive: Xu et al.'s coverage term, alignment entropy (nats per token),
    # Lu et al.'s sentinel weight on digit and on other tokens.
    "doubly_stochastic": False, "attention_entropy": False,
    "sentinel_beta_digits": False, "sentinel_beta_words": True,
}


def higher_is_better(metric: str) -> bool:
  """The direction of `metric`; a ValueError naming the known metrics for any other name."""
  if metric not in HIGHER_IS_BETTER:
    raise ValueError(f"unknown metric {metric!r}; known: {', '.join(HIGHER_IS_BETTER)}")
  return HIGHER_IS_BETTER[metric]


def better(metric: str, a: float, b: float) -> bool:
  """Whether score `a` beats `b` on `metric` (a tie is not better)."""
  return a > b if higher_is_better(metric) else a < b


Tokenize = Callable[[str], list]
Scorer = Callable[[Sequence[str], Sequence[Sequence[str]], Tokenize], dict]


def _sequence_accuracy(predictions, references, tokenize) -> dict:
  del tokenize
  return {"sequence_accuracy": float(np.mean([p in refs for p, refs in
                                              zip(predictions, references)]))}


def _token_error_rate(predictions, references, tokenize) -> dict:
  """Edit distance over the vocabulary's tokens to the closest reference."""
  return {"token_error_rate": phoneme_error_rate(
      [tokenize(p) for p in predictions], [[tokenize(r) for r in refs] for refs in references])}


# Scorer name -> (function, the metrics it returns).
SCORERS: dict[str, tuple[Scorer, tuple[str, ...]]] = {
    "sequence_accuracy": (_sequence_accuracy, ("sequence_accuracy",)),
    "token_error_rate": (_token_error_rate, ("token_error_rate",)),
    "g2p": (lambda p, r, _: g2p_scores(p, r), ("wer", "per", "wer_no_stress", "per_no_stress")),
    "bleu": (lambda p, r, _: {"bleu": bleu(p, r)}, ("bleu",)),
    "asr": (lambda p, r, _: asr_scores(p, r), ("cer", "wer")),
}


def scorer_names(spec: str) -> list[str]:
  """'sequence_accuracy,g2p' -> the names; a ValueError naming an unknown one."""
  names = [n.strip() for n in spec.split(",") if n.strip()]
  for name in names:
    if name not in SCORERS:
      raise ValueError(f"unknown scorer {name!r}; known: {', '.join(SCORERS)}")
  return names


def scored_metrics(spec: str) -> list[str]:
  """The metrics the scorers of `spec` return."""
  return [m for name in scorer_names(spec) for m in SCORERS[name][1]]


def score(spec: str, predictions: Sequence[str], references: Sequence[Sequence[str]],
          tokenize: Tokenize) -> dict[str, float]:
  """Runs the scorers of `spec` on decoded strings against every example's references."""
  out = {}
  for name in scorer_names(spec):
    out.update(SCORERS[name][0](predictions, references, tokenize))
  return out
