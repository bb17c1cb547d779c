"""Corpus BLEU (sacrebleu) with a varying number of references per sentence."""
from __future__ import annotations

from typing import Sequence

import sacrebleu


def bleu(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
  """sacrebleu's corpus BLEU (0-100). Sentences with fewer references repeat their first
  one to fill the reference streams; a repeated reference changes no clipped count or
  closest length, so the score is that of each sentence's own references."""
  if len(predictions) != len(references) or any(not refs for refs in references):
    raise ValueError(f"{len(predictions)} predictions need as many non-empty reference lists, "
                     f"got {len(references)}")
  width = max((len(refs) for refs in references), default=1)
  streams = [[refs[i] if i < len(refs) else refs[0] for refs in references]
             for i in range(width)]
  return sacrebleu.corpus_bleu(list(predictions), streams).score
