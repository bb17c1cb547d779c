"""Speech recognition scores: character and word error rates, computed with `jiwer`.

Both are corpus-level rates, the standard definition:

  CER = total character edits (substitutions + deletions + insertions)
        / total characters of the references scored against;
  WER = the same over words (whitespace-separated).

CER counts every character of the strings as given, spaces included (leading
and trailing ones too): "seven three" has 11 characters, and a missing space
between two words is one edit. WER splits on spaces, so extra spaces cost
nothing there.

An example may have several references: each rate scores it against its
closest reference in that rate's units (fewest edits; ties go to the shorter
reference, then to the first listed), as the G2P phoneme error rate does. So
CER and WER may pick different references for the same example.

An empty prediction is fine (every reference unit is a deletion); an empty
reference (no words) is a ValueError naming the example.
"""
from __future__ import annotations

from typing import Sequence

import jiwer

# Words: jiwer's default (collapse repeated spaces, strip, split on spaces).
_WORDS = jiwer.wer_default
# Characters: every character, no stripping (jiwer's cer_default strips the ends).
_CHARS = jiwer.ReduceToListOfListOfChars()


def _edits(reference: str, prediction: str, words: bool) -> tuple[int, int]:
  """(edits, reference length) in words or characters."""
  if words:
    out = jiwer.process_words(reference, prediction, _WORDS, _WORDS)
  else:
    out = jiwer.process_characters(reference, prediction, _CHARS, _CHARS)
  edits = out.substitutions + out.deletions + out.insertions
  return edits, out.hits + out.substitutions + out.deletions


def _reference_lists(predictions: Sequence[str], references: Sequence) -> list[list[str]]:
  """Each example's references as a list (a bare string is one reference), checked."""
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists.")
  if not predictions:
    raise ValueError("No examples to score.")
  lists = [[refs] if isinstance(refs, str) else list(refs) for refs in references]
  for i, refs in enumerate(lists):
    if not refs:
      raise ValueError(f"Example {i} has no reference.")
    for ref in refs:
      if not ref.split():
        raise ValueError(f"Example {i} has an empty reference {ref!r}.")
  return lists


def error_rate(predictions: Sequence[str], references: Sequence[Sequence[str]],
               words: bool) -> float:
  """Total edits to each example's closest reference over the total length of those
  references: WER when `words`, else CER (spaces count as characters)."""
  edits = length = 0
  for prediction, refs in zip(predictions, _reference_lists(predictions, references)):
    # min over (edits, length): fewest edits, then the shorter reference, then the first.
    d, n = min(_edits(ref, prediction, words) for ref in refs)
    edits += d
    length += n
  return edits / length


def asr_scores(predictions: Sequence[str], references: Sequence[Sequence[str]]
               ) -> dict[str, float]:
  """{'cer': ..., 'wer': ...} of decoded transcripts against each example's references."""
  return {"cer": error_rate(predictions, references, words=False),
          "wer": error_rate(predictions, references, words=True)}
