"""CER and WER (jiwer) against sums of the project's own edit distance."""
import random

import pytest

from attention_jax.evaluate import edit_distance
from attention_jax.evaluate.asr import asr_scores, error_rate
from attention_jax.evaluate.metrics import HIGHER_IS_BETTER, SCORERS, score, scored_metrics


def _reference_rates(predictions, references):
  """Corpus CER and WER from levenshtein.edit_distance, closest reference per example."""
  totals = {}
  for name, split in (("cer", list), ("wer", str.split)):
    edits = length = 0
    for pred, refs in zip(predictions, references):
      d, n = min((edit_distance(split(r), split(pred)), len(split(r))) for r in refs)
      edits += d
      length += n
    totals[name] = edits / length
  return totals


@pytest.mark.parametrize("pred, ref, char_edits, word_edits", [
    ("seven three one", "seven three one", 0, 0),
    ("seven tree one", "seven three one", 1, 1),       # deletion of 'h': one wrong word
    ("seven three two", "seven three one", 3, 1),      # o->t, n->w, e->o: a substitution
    ("seven three one one", "seven three one", 4, 1),  # insertion of ' one'
    ("seven one", "seven three one", 6, 1),            # deletion of 'three '
    ("seventhree one", "seven three one", 1, 2),       # a missing space is one character
    ("", "seven three one", 15, 3),                    # empty hypothesis: all deletions
])
def test_hand_cases(pred, ref, char_edits, word_edits):
  assert edit_distance(ref, pred) == char_edits
  assert edit_distance(ref.split(), pred.split()) == word_edits
  assert asr_scores([pred], [[ref]]) == {"cer": pytest.approx(char_edits / len(ref)),
                                         "wer": pytest.approx(word_edits / len(ref.split()))}


def test_corpus_level_not_mean_of_examples():
  preds, refs = ["", "one two three four"], [["one"], ["one two three four"]]
  # (3 + 0) / (3 + 18) characters, (1 + 0) / (1 + 4) words; the mean per example would be 0.5.
  assert asr_scores(preds, refs) == {"cer": pytest.approx(3 / 21), "wer": pytest.approx(1 / 5)}


def test_spaces_count_as_characters():
  assert error_rate(["one  two"], [["one two"]], words=False) == pytest.approx(1 / 7)
  assert error_rate([" one"], [["one"]], words=False) == pytest.approx(1 / 3)  # no stripping
  assert error_rate(["one  two "], [["one two"]], words=True) == 0.0


def test_closest_reference_per_example():
  refs = [["nine oh one", "nine zero one"]]
  assert asr_scores(["nine zero one"], refs) == {"cer": 0.0, "wer": 0.0}
  # "nine oh oen": 2 character edits to "nine oh one" (11 chars) vs more to the other.
  assert error_rate(["nine oh oen"], refs, words=False) == pytest.approx(2 / 11)
  # Ties in edits go to the shorter reference: "a b c" is 1 word edit from both.
  assert error_rate(["a b c"], [["a b c d", "a b"]], words=True) == pytest.approx(1 / 2)
  # A bare string is one reference.
  assert asr_scores(["one"], ["one"]) == {"cer": 0.0, "wer": 0.0}


def test_matches_levenshtein_on_random_pairs():
  rng = random.Random(0)
  words = ["oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "zero"]

  def sentence(lo):
    text = " ".join(rng.choice(words) for _ in range(rng.randint(lo, 6)))
    # Some character-level noise, so that CER and WER differ beyond whole words.
    return "".join(c if rng.random() > 0.05 else rng.choice("aeiou ") for c in text)

  preds = [sentence(0) for _ in range(50)]
  refs = [[r for r in (sentence(1) for _ in range(rng.randint(1, 3))) if r.split()] or ["one"]
          for _ in range(50)]
  expected = _reference_rates(preds, refs)
  got = asr_scores(preds, refs)
  assert got == {k: pytest.approx(v) for k, v in expected.items()}
  assert 0 < got["cer"] and 0 < got["wer"]


def test_bad_arguments():
  with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
    asr_scores(["a", "b"], [["a"]])
  with pytest.raises(ValueError, match="No examples"):
    asr_scores([], [])
  with pytest.raises(ValueError, match="Example 1 has an empty reference"):
    asr_scores(["a", "b"], [["a"], ["b", " "]])
  with pytest.raises(ValueError, match="Example 0 has no reference"):
    asr_scores(["a"], [[]])


def test_registered_scorer():
  assert SCORERS["asr"][1] == ("cer", "wer")
  assert scored_metrics("asr") == ["cer", "wer"]
  assert HIGHER_IS_BETTER["cer"] is False and HIGHER_IS_BETTER["wer"] is False
  out = score("asr,sequence_accuracy", ["seven one"], [["seven three one"]], str.split)
  assert out == {"cer": pytest.approx(6 / 15), "wer": pytest.approx(1 / 3),
                 "sequence_accuracy": 0.0}
