r"""Captioning digit scenes: where each digit is, said in words (Show, Attend and Tell).

    python -m attention_jax.main --config=experiments/caption_digits.py --workdir=runs/caption
    python -m attention_jax.main --config=experiments/caption_digits.py:model=adaptive \
        --workdir=runs/caption_adaptive
    python -m attention_jax.main --config=experiments/caption_digits.py:smoke --workdir=/tmp/cap

Data: `digit_scenes` (2-4 MNIST digits at cells of a 3x3 grid in an 84x84 image; the
caption names each digit and its place in reading order, every ordering a reference).

Arguments (after the colon): model (none, soft, soft_ds, hard, adaptive, transformer: see
`attention_jax.experiment.IMAGE_MODELS`), steps, test, smoke.

Sweep (`python -m launch.sweep --config=experiments/caption_digits.py --root=runs/caption_digits`):
`sweep`, every decoder x 3 seeds, each tested at its best dev BLEU.
`python experiments/caption_digits.py --root=runs/caption_digits`: test exact match and the
share of the scene's digits named with their place, against the scene's digit count.
"""
import sys

from attention_jax import experiment
from launch import by_length

DEFAULTS = dict(experiment.IMAGE_DEFAULTS)


def get_config(arg=None):
  args = experiment.parse_arg(arg, DEFAULTS)
  return experiment.image_config(args, "digit_scenes/default", height=84,
                                 metrics="bleu,sequence_accuracy", select_by="bleu")


sweep = experiment.image_sweep


BUCKETS = ((2, 2), (3, 3), (4, 4))  # digits in a scene


def _digits(source: str) -> int:
  """A scene's digit count: its source names one MNIST image per digit."""
  return len(source.split())


def _placed(caption: str) -> set[str]:
  """The caption's clauses ("a 3 top left"): each names one digit and its place."""
  return {clause.strip() for clause in caption.split(",") if clause.strip()}


def _exact(examples: list[dict]) -> float:
  return sum(e["prediction"] in e["references"] for e in examples) / len(examples)


def _digits_placed(examples: list[dict]) -> float:
  """Of all the scenes' digits, the share the caption names with the right place."""
  found = sum(len(_placed(e["prediction"]) & _placed(e["references"][0])) for e in examples)
  return found / sum(len(_placed(e["references"][0])) for e in examples)


def main(argv=None) -> int:
  """`--root=R` of a sweep run with test=True: exact captions and digits placed against the
  scene's digit count, mean over seeds, in R/report/{exact,digits_placed}_by_digits.*"""
  common = dict(description="Captions by digit count from a caption_digits sweep.",
                buckets=BUCKETS, length=_digits, xlabel="digits in the scene", percent=True)
  code = by_length.main(argv, score=_exact, name="exact_by_digits",
                        ylabel="exact captions (%)", **common)
  return code or by_length.main(argv, score=_digits_placed, name="digits_placed_by_digits",
                                ylabel="digits named in place (%)", **common)


if __name__ == "__main__":
  sys.exit(main())
