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
share of the scene's digits named with their place, against the scene's digit count; and for
each adaptive run, the sentinel's mean weight beta on each role a word plays in the caption
(teacher-forced on the test split at the run's best checkpoint).
"""
import argparse
import collections
import os
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


# The role of each word of a clause ("a 3 top left", "an 8 at the top"): "the" after
# on / at / in and "middle" after "in the" follow from the words before them (the template
# allows nothing else); every other word needs the image (or the decoder's memory of it).
ROLES = ("article", "digit", "first place word", "implied by the template", "other place word",
         "comma", "end")


def roles(tokens: list[str]) -> list[str]:
  """The role (`ROLES`) of each token of one caption, EOS ('</s>') included."""
  out, clause = [], []
  for token in tokens:
    if token in (",", "</s>"):
      out.append("comma" if token == "," else "end")
      clause = []
      continue
    if len(clause) < 3:
      out.append(ROLES[len(clause)])
    elif (token == "the" and clause[-1] in ("on", "at", "in")) or (
        token == "middle" and clause[-2:] == ["in", "the"]):
      out.append("implied by the template")
    else:
      out.append("other place word")
    clause.append(token)
  return out


def beta_by_role(betas, tokens_per_row: list[list[str]]) -> dict[str, list[float]]:
  """role -> [sum of beta, count] over the given rows (`betas` [rows, steps])."""
  sums = collections.defaultdict(lambda: [0.0, 0])
  for row, tokens in zip(betas, tokens_per_row):
    for beta, role in zip(row, roles(tokens)):
      sums[role][0] += float(beta)
      sums[role][1] += 1
  return dict(sums)


def _sentinel_rows(workdir: str, split: str = "test") -> dict[str, list[float]]:
  """`beta_by_role` of one adaptive run's best checkpoint, teacher-forced on `split`."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from attention_jax import data, predict, tasks  # pylint: disable=g-import-not-at-top
  from attention_jax.tasks.seq2seq import _tokens  # pylint: disable=g-import-not-at-top
  config = predict.load_config(workdir)
  task = tasks.build_task(config, data.from_config(config.data))
  name, step = predict.find_checkpoint(workdir, "best")
  params = predict.restore_params(config, task, workdir, name, step)
  betas, tokens = [], []
  for batch in task.batches(split, batch_size=config.data.eval_batch_size):
    real = np.asarray(batch["weights"]) > 0
    _, inter = task.intermediates(params, batch)
    betas += list(np.asarray(inter["intermediates"]["sentinel_beta"][0])[real])
    tokens += [_tokens(task.dataset.target_vocab, t) for t in np.asarray(batch["targets"])[real]]
  return beta_by_role(betas, tokens)


def sentinel_report(root: str) -> list[str]:
  """The sentinel's mean beta per role for every finished adaptive run of the sweep under
  `root`, written to `root/report/sentinel_beta_by_role.md`."""
  lines = ["| run | " + " | ".join(ROLES) + " |", "|---|" + "---|" * len(ROLES)]
  for name in sorted(os.listdir(root)):
    workdir = os.path.join(root, name)
    finished = os.path.exists(os.path.join(workdir, "result.json"))  # best/ is final then
    if "model=adaptive" not in name or not finished:
      continue
    sums = _sentinel_rows(workdir)
    cells = [f"{sums[r][0] / sums[r][1]:.3f}" if r in sums else "" for r in ROLES]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  os.makedirs(os.path.join(root, "report"), exist_ok=True)
  with open(os.path.join(root, "report", "sentinel_beta_by_role.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return lines


def main(argv=None) -> int:
  """`--root=R` of a sweep run with test=True: exact captions and digits placed against the
  scene's digit count, mean over seeds, in R/report/{exact,digits_placed}_by_digits.*; the
  adaptive runs' beta by role in R/report/sentinel_beta_by_role.md."""
  common = dict(description="Captions by digit count from a caption_digits sweep.",
                buckets=BUCKETS, length=_digits, xlabel="digits in the scene", percent=True)
  argv = sys.argv[1:] if argv is None else argv
  code = by_length.main(argv, score=_exact, name="exact_by_digits",
                        ylabel="exact captions (%)", **common)
  code = code or by_length.main(argv, score=_digits_placed, name="digits_placed_by_digits",
                                ylabel="digits named in place (%)", **common)
  if code:
    return code
  parser = argparse.ArgumentParser()
  parser.add_argument("--root")
  root = parser.parse_known_args(argv)[0].root
  print("\n".join(sentinel_report(root)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
