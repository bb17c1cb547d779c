"""OCR CER and output length by the strip's digit count (experiments/ocr_digits.py's report)
from prediction files it did not write."""
import os

from attention_jax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OCR = experiment.load(os.path.join(ROOT, "experiments", "ocr_digits.py"))


def _example(reference, prediction):
  source = " ".join(f"mnist:test:{i}" for i in range(len(reference)))
  return {"source": source, "prediction": prediction, "references": [reference],
          "correct": prediction == reference}


def test_cer_and_output_length_by_digit_count_averaged_over_seeds(prediction_sweep):
  seeds = [[("123456", "12345"), ("1234567", "1234567"), ("7654321", "76543")],  # deletions
           [("123456", "023456"), ("1234567", "12")]]  # a substitution; 5 deletions
  root = prediction_sweep([[_example(*e) for e in examples] for examples in seeds])
  assert OCR.main([f"--root={root}"]) == 0
  report = root / "report"
  # 6 digits: 1/6 and 1/6; 7 digits: seed 0 (0 + 2) / 14, seed 1 5 / 7. Mean over seeds.
  cer = (report / "cer_by_digits.md").read_text()
  assert "| configuration | seeds | 6 | 7 |\n" in cer
  assert f"| model=soft | 2 | {100 / 6:.1f} | {100 * (2 / 14 + 5 / 7) / 2:.1f} |\n" in cer
  digits = (report / "output_digits_by_digits.md").read_text()
  assert f"| model=soft | 2 | {(5 + 6) / 2:.1f} | {(6 + 2) / 2:.1f} |\n" in digits
  assert (report / "cer_by_digits.png").read_bytes()[:4] == b"\x89PNG"
