"""Edit distance, WER and PER against hand-computed examples."""
import pytest

from attention_jax.evaluate import (closest_reference, edit_distance, g2p_scores, group_references,
                                    phoneme_error_rate, strip_stress, word_error_rate)

TOMATO = ["T AH0 M EY1 T OW2", "T AH0 M AA1 T OW2"]
EITHER = ["IY1 DH ER0", "AY1 DH ER0"]
CAT = ["K AE1 T"]


def _brute_force(a, b):
  """Textbook full-table Levenshtein, to check the vectorised one."""
  table = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
  for i in range(1, len(a) + 1):
    for j in range(1, len(b) + 1):
      table[i][j] = min(table[i - 1][j] + 1, table[i][j - 1] + 1,
                        table[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
  return table[-1][-1]


def test_edit_distance_hand_examples():
  assert edit_distance("kitten", "sitting") == 3  # k->s, e->i, +g
  assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3
  assert edit_distance("flaw", "lawn") == 2  # -f, +n
  assert edit_distance(TOMATO[0].split(), TOMATO[1].split()) == 1
  assert edit_distance(["AH0", "B"], ["AH0", "B"]) == 0
  assert edit_distance("intention", "execution") == 5  # the textbook example


def test_edit_distance_matches_brute_force():
  import random
  rng = random.Random(0)
  for _ in range(500):
    a = [rng.randrange(3) for _ in range(rng.randrange(9))]
    b = [rng.randrange(3) for _ in range(rng.randrange(9))]
    assert edit_distance(a, b) == _brute_force(a, b), (a, b)


def test_wer_counts_a_word_right_if_any_reference_matches():
  preds = ["T AH0 M AA1 T OW2", "IY1 DH AH0", "K AE1"]
  refs = [TOMATO, EITHER, CAT]
  assert word_error_rate(preds, refs) == pytest.approx(2 / 3)
  assert word_error_rate([p.split() for p in preds], refs) == pytest.approx(2 / 3)  # lists too


def test_per_uses_the_closest_reference():
  preds = ["T AH0 M AA1 T OW2", "IY1 DH AH0", "K AE1"]
  refs = [TOMATO, EITHER, CAT]
  # tomato: 0 edits to its 2nd reference (6 phonemes); either: 1 edit to IY1 DH ER0 (3),
  # not 2 to AY1 DH ER0; cat: 1 deletion (3). PER = (0 + 1 + 1) / (6 + 3 + 3).
  assert closest_reference("IY1 DH AH0", EITHER) == (1, 3)
  assert phoneme_error_rate(preds, refs) == pytest.approx(2 / 12)
  # Ties in distance go to the shorter reference.
  assert closest_reference("A B C", ["A B C D", "A B"]) == (1, 2)
  assert phoneme_error_rate(["A B C"], [["A B C D", "A B"]]) == pytest.approx(1 / 2)


def test_stress_stripping_scores():
  assert strip_stress("T AH0 M EY1 T OW2") == "T AH M EY T OW"
  assert strip_stress(["AH0", "B"]) == ["AH", "B"]
  preds, refs = ["T AH1 M EY1 T OW2"], [TOMATO]  # wrong stress on one vowel only
  assert word_error_rate(preds, refs) == 1.0
  assert phoneme_error_rate(preds, refs) == pytest.approx(1 / 6)
  assert word_error_rate(preds, refs, ignore_stress=True) == 0.0
  assert phoneme_error_rate(preds, refs, ignore_stress=True) == 0.0
  assert g2p_scores(preds, refs) == {"wer": 1.0, "per": pytest.approx(1 / 6),
                                     "wer_no_stress": 0.0, "per_no_stress": 0.0}


def test_group_references_collects_every_pronunciation():
  words = ["tomato", "cat", "tomato", "tomato"]
  prons = [TOMATO[0], CAT[0], TOMATO[1], TOMATO[0]]  # the repeat is merged
  assert group_references(words, prons) == {"tomato": TOMATO, "cat": CAT}


def test_bad_arguments():
  with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
    word_error_rate(["A", "B"], [["A"]])
  with pytest.raises(ValueError, match="at least one reference"):
    phoneme_error_rate(["A"], [[]])
  with pytest.raises(ValueError, match="No words"):
    phoneme_error_rate([], [])
