"""Grapheme-to-phoneme scores: WER and PER against every reference of a word.

A pronunciation is a space-separated ARPAbet string ("T AH0 M EY1 T OW2") or a
list of phonemes. A word may have several references (CMUdict lists
alternatives); following the G2P literature:

  WER = fraction of words whose prediction equals NONE of its references;
  PER = sum over words of the edit distance to the CLOSEST reference, divided by
        the sum of the lengths of those closest references
        (ties go to the shorter reference, then to the first listed).

`strip_stress` removes stress digits for the no-stress score.
"""
from typing import Iterable, Sequence

from attention_jax.evaluate.levenshtein import edit_distance

Pron = str | Sequence[str]


def _phonemes(pron: Pron) -> list[str]:
  return pron.split() if isinstance(pron, str) else list(pron)


def strip_stress(pron: Pron) -> Pron:
  """Removes ARPAbet stress digits: 'AH0 B' -> 'AH B' (lists give lists)."""
  stripped = [p.rstrip("012") for p in _phonemes(pron)]
  return " ".join(stripped) if isinstance(pron, str) else stripped


def group_references(words: Iterable[str], prons: Iterable[Pron]) -> dict[str, list[Pron]]:
  """(word, pronunciation) pairs -> word -> every distinct pronunciation, in order."""
  refs: dict[str, list[Pron]] = {}
  for word, pron in zip(words, prons):
    known = refs.setdefault(word, [])
    if _phonemes(pron) not in [_phonemes(k) for k in known]:
      known.append(pron)
  return refs


def closest_reference(prediction: Pron, references: Sequence[Pron]) -> tuple[int, int]:
  """(edit distance, length) of the reference closest to the prediction."""
  if not references:
    raise ValueError("A word needs at least one reference pronunciation.")
  hyp = _phonemes(prediction)
  scored = [(edit_distance(_phonemes(r), hyp), len(_phonemes(r))) for r in references]
  return min(scored)  # smallest distance, then shortest reference


def _check(predictions, references):
  if len(predictions) != len(references):
    raise ValueError(f"{len(predictions)} predictions but {len(references)} reference lists.")
  if not predictions:
    raise ValueError("No words to score.")


def word_error_rate(predictions: Sequence[Pron], references: Sequence[Sequence[Pron]],
                    ignore_stress: bool = False) -> float:
  """Fraction of words whose prediction matches none of its references."""
  _check(predictions, references)
  norm = (lambda p: _phonemes(strip_stress(p))) if ignore_stress else _phonemes
  wrong = sum(norm(p) not in [norm(r) for r in refs] for p, refs in zip(predictions, references))
  return wrong / len(predictions)


def phoneme_error_rate(predictions: Sequence[Pron], references: Sequence[Sequence[Pron]],
                       ignore_stress: bool = False) -> float:
  """Total edits to each word's closest reference over the total length of those references."""
  _check(predictions, references)
  if ignore_stress:
    predictions = [strip_stress(p) for p in predictions]
    references = [[strip_stress(r) for r in refs] for refs in references]
  edits = length = 0
  for pred, refs in zip(predictions, references):
    d, n = closest_reference(pred, refs)
    edits += d
    length += n
  return edits / max(length, 1)


def g2p_scores(predictions: Sequence[Pron], references: Sequence[Sequence[Pron]]) -> dict[str, float]:
  """WER and PER with and without stress digits (the no-stress pair is the comparable one
  across configs)."""
  return {"wer": word_error_rate(predictions, references),
          "per": phoneme_error_rate(predictions, references),
          "wer_no_stress": word_error_rate(predictions, references, ignore_stress=True),
          "per_no_stress": phoneme_error_rate(predictions, references, ignore_stress=True)}
