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
"""
from attention_jax import experiment

DEFAULTS = dict(experiment.IMAGE_DEFAULTS)


def get_config(arg=None):
  args = experiment.parse_arg(arg, DEFAULTS)
  return experiment.image_config(args, "digit_scenes/default", height=84,
                                 metrics="bleu,sequence_accuracy", select_by="bleu")


sweep = experiment.image_sweep
