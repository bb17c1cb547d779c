"""Caption exact match and digits named in place by the scene's digit count
(experiments/caption_digits.py's report), from prediction files it did not write."""
import os

from attention_jax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTION = experiment.load(os.path.join(ROOT, "experiments", "caption_digits.py"))


def _example(references, prediction):
  source = " ".join(f"mnist:test:{i}" for i in range(len(references[0].split(","))))
  return {"source": source, "prediction": prediction, "references": references,
          "correct": prediction in references}


TWO = ["a 3 top left , a 7 in the middle", "a 7 in the middle , a 3 top left"]
THREE = ["a 1 top left , a 2 top right , a 5 bottom right"]  # one ordering is enough here


def test_exact_and_placed_digits_by_digit_count_averaged_over_seeds(prediction_sweep):
  seeds = [[(TWO, TWO[1]), (TWO, "a 3 top left , a 7 top right"),  # other order; a place wrong
            (THREE, "a 1 top left , a 2 top right")],  # a digit left out
           [(TWO, "a 3 top left"), (THREE, THREE[0])]]
  root = prediction_sweep([[_example(*e) for e in examples] for examples in seeds])
  assert CAPTION.main([f"--root={root}"]) == 0
  report = root / "report"
  exact = (report / "exact_by_digits.md").read_text()
  assert "| configuration | seeds | 2 | 3 |\n" in exact
  # 2 digits: seed 0 1 of 2 exact, seed 1 0 of 1; 3 digits: 0 of 1, then 1 of 1.
  assert f"| model=soft | 2 | {100 * (0.5 + 0) / 2:.1f} | {100 * (0 + 1) / 2:.1f} |\n" in exact
  placed = (report / "digits_placed_by_digits.md").read_text()
  # 2 digits: seed 0 (2 + 1) of 4, seed 1 1 of 2; 3 digits: 2 of 3, then 3 of 3.
  assert (f"| model=soft | 2 | {100 * (3 / 4 + 1 / 2) / 2:.1f} | "
          f"{100 * (2 / 3 + 1) / 2:.1f} |\n") in placed
  assert (report / "exact_by_digits.png").read_bytes()[:4] == b"\x89PNG"


def test_each_caption_word_gets_its_role():
  tokens = "a 3 top left , an 8 at the top , a 1 in the middle , a 0 on the right </s>".split()
  assert CAPTION.roles(tokens) == [
      "article", "digit", "first place word", "other place word", "comma",
      "article", "digit", "first place word", "implied by the template", "other place word",
      "comma",
      "article", "digit", "first place word", "implied by the template",
      "implied by the template", "comma",
      "article", "digit", "first place word", "implied by the template", "other place word",
      "end"]


def test_sentinel_beta_is_summed_by_role_over_rows():
  rows = [["a", "3", "in", "the", "middle", "</s>"], ["an", "8", "top", "left", "</s>"]]
  betas = [[0.5, 0.25, 0.0, 1.0, 0.5, 0.75, 0.9],  # a step past EOS is not counted
           [0.25, 0.75, 0.125, 0.5, 1.0]]
  sums = CAPTION.beta_by_role(betas, rows)
  assert sums == {"article": [0.75, 2], "digit": [1.0, 2], "first place word": [0.125, 2],
                  "implied by the template": [1.5, 2], "other place word": [0.5, 1],
                  "end": [1.75, 2]}
