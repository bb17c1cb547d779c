"""Levenshtein distance between two token sequences."""
from typing import Hashable, Sequence

import numpy as np


def edit_distance(reference: Sequence[Hashable], hypothesis: Sequence[Hashable]) -> int:
  """Minimum number of substitutions, insertions and deletions turning one into the other.

  Works on any sequences of comparable tokens (phoneme lists, strings of
  characters, word lists). Runs the classic dynamic programme one row at a
  time with NumPy: O(len(reference) * len(hypothesis)) time, O(len(hypothesis)) memory.
  """
  ref, hyp = list(reference), list(hypothesis)
  if not ref or not hyp:
    return len(ref) + len(hyp)
  previous = np.arange(len(hyp) + 1)
  for i, r in enumerate(ref, start=1):
    # Substitution / match and deletion vectorised; insertions need a running minimum.
    cost = np.array([r != h for h in hyp], dtype=np.int64)
    current = np.empty_like(previous)
    current[0] = i
    current[1:] = np.minimum(previous[:-1] + cost, previous[1:] + 1)
    # current[j] = min(current[j], current[j-1] + 1): a cumulative min of (value - j) + j.
    offsets = np.arange(len(current))
    current = np.minimum.accumulate(current - offsets) + offsets
    previous = current
  return int(previous[-1])
