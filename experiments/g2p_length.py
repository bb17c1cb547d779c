r"""WER against word length, no attention vs attention: Bahdanau et al. 2015 Figure 2's question
(does attention hold up on long inputs?) asked of CMUdict G2P.

The trials are g2p_attention's, trained with `test=True`, so each writes every test word's
prediction to `predictions_test.jsonl`; this file's `__main__` turns a sweep of them into
a plot and a table of WER by word length (letters), mean over seeds.

    python -m launch.sweep --config=experiments/g2p_length.py --root=runs/g2p_length --seeds=3
    python experiments/g2p_length.py --root=runs/g2p_length      # -> <root>/report/wer_by_length.*

Arguments (after the colon): as experiments/g2p_attention.py.
"""
import argparse
import collections
import json
import os
import sys

import numpy as np

from attention_jax import experiment

_G2P = experiment.load(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                    "g2p_attention.py"))
DEFAULTS = dict(_G2P.DEFAULTS, test=True)
BUCKETS = ((1, 4), (5, 5), (6, 6), (7, 7), (8, 8), (9, 9), (10, 10), (11, 12), (13, 40))


def get_config(arg=None):
  args = experiment.parse_arg(arg, DEFAULTS)
  return _G2P.get_config(",".join(f"{k}={v}" for k, v in args.items()))


def sweep(add):
  """No attention vs Bahdanau (additive) vs Luong (general)."""
  add(attention="none")
  add(attention="bahdanau", score="additive")
  add(attention="luong", score="general")


def wer_by_length(predictions_path: str) -> dict[tuple[int, int], tuple[float, int]]:
  """Bucket (first, last letters) -> (word error rate, words) from a predictions file."""
  wrong, total = collections.Counter(), collections.Counter()
  with open(predictions_path) as f:
    for line in f:
      example = json.loads(line)
      n = len(example["source"])
      bucket = next(b for b in BUCKETS if b[0] <= n <= b[1])
      total[bucket] += 1
      wrong[bucket] += not example["correct"]
  return {b: (wrong[b] / total[b], total[b]) for b in BUCKETS if total[b]}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description="WER by word length from a g2p_length sweep.")
  p.add_argument("--root", required=True)
  args = p.parse_args(argv)
  with open(os.path.join(args.root, "sweep.json")) as f:
    trials = json.load(f)["trials"]
  curves = collections.defaultdict(list)  # configuration -> one {bucket: wer} per seed
  for name, record in trials.items():
    path = os.path.join(args.root, name, "predictions_test.jsonl")
    if os.path.exists(path):
      config = ",".join(f"{k}={v}" for k, v in record["overrides"].items() if k != "seed")
      curves[config].append(wer_by_length(path))
  if not curves:
    print(f"error: no trial in {args.root} has predictions_test.jsonl yet", file=sys.stderr)
    return 2
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  out = os.path.join(args.root, "report")
  os.makedirs(out, exist_ok=True)
  labels = [f"{a}-{b}" if a != b else str(a) for a, b in BUCKETS]
  lines = ["| configuration | seeds | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(BUCKETS)]
  fig, ax = plt.subplots(figsize=(7, 4))
  for config, runs in curves.items():
    means = [100 * np.mean([r[b][0] for r in runs]) if all(b in r for r in runs) else np.nan
             for b in BUCKETS]
    ax.plot(range(len(BUCKETS)), means, marker="o", label=config)
    lines.append(f"| {config} | {len(runs)} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
  words = [curves[next(iter(curves))][0].get(b, (0, 0))[1] for b in BUCKETS]
  lines.append("| words per bucket | | " + " | ".join(map(str, words)) + " |")
  ax.set_xticks(range(len(BUCKETS)), labels)
  ax.set(xlabel="word length (letters)", ylabel="test WER (%)", title="WER by word length")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, "wer_by_length.png"), dpi=120)
  with open(os.path.join(out, "wer_by_length.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))
  print(f"plot: {out}/wer_by_length.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
