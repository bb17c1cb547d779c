"""A score against input length, from a sweep's `predictions_test.jsonl` files: one table, one plot.

Trials run with a test split write each test example's prediction (`source`,
`prediction`, `references`, `correct`); this buckets them by the source's
length and scores every bucket, per configuration (mean over seeds).
experiments/g2p_length.py plots WER by letters, experiments/translation_deu_eng.py
BLEU by words.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Callable, Sequence

import numpy as np

from launch import manifest

Bucket = tuple[int, int]  # first and last length, inclusive


def bucket_scores(predictions_path: str, buckets: Sequence[Bucket], length: Callable[[str], int],
                  score: Callable[[list[dict]], float]) -> dict[Bucket, tuple[float, int]]:
  """Bucket -> (score of its examples, examples) from one predictions file; empty buckets left out."""
  members = collections.defaultdict(list)
  with open(predictions_path) as f:
    for number, line in enumerate(f, 1):
      example = json.loads(line)
      n = length(example["source"])
      bucket = next((b for b in buckets if b[0] <= n <= b[1]), None)
      if bucket is None:
        raise ValueError(f"{predictions_path}:{number}: source length {n} is in no bucket of "
                         f"{list(buckets)}")
      members[bucket].append(example)
  return {b: (score(members[b]), len(members[b])) for b in buckets if members[b]}


def sweep_curves(root: str, **kwargs) -> dict[str, list[dict[Bucket, tuple[float, int]]]]:
  """Configuration (its overrides less the seed) -> one `bucket_scores` per seed that has predictions,
  in the sweep's order."""
  with open(os.path.join(root, manifest.FILENAME)) as f:
    trials = json.load(f)["trials"]
  curves = collections.defaultdict(list)
  for name, record in manifest.in_sweep_order(trials):
    path = os.path.join(root, name, "predictions_test.jsonl")
    if os.path.exists(path):
      curves[manifest.config_label(record["overrides"])].append(bucket_scores(path, **kwargs))
  return curves


def write_report(root: str, curves, buckets: Sequence[Bucket], *, name: str, xlabel: str,
                 ylabel: str, percent: bool) -> list[str]:
  """Writes `<root>/report/<name>.md` and `.png` (mean over seeds per bucket); returns the table.
  Buckets without an example in any run are left out."""
  buckets = [b for b in buckets if any(b in r for runs in curves.values() for r in runs)]
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  out = os.path.join(root, "report")
  os.makedirs(out, exist_ok=True)
  labels = [f"{a}-{b}" if a != b else str(a) for a, b in buckets]
  lines = ["| configuration | seeds | " + " | ".join(labels) + " |",
           "|---|---|" + "---|" * len(buckets)]
  fig, ax = plt.subplots(figsize=(7, 4))
  scale = 100.0 if percent else 1.0
  for config, runs in curves.items():
    means = [scale * np.mean([r[b][0] for r in runs]) if all(b in r for r in runs) else np.nan
             for b in buckets]
    ax.plot(range(len(buckets)), means, marker="o", label=config)
    lines.append(f"| {config} | {len(runs)} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
  counts = [next(iter(curves.values()))[0].get(b, (0, 0))[1] for b in buckets]
  lines.append("| examples | | " + " | ".join(map(str, counts)) + " |")
  ax.set_xticks(range(len(buckets)), labels)
  ax.set(xlabel=xlabel, ylabel=ylabel, title=f"{ylabel} by {xlabel}")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, f"{name}.png"), dpi=120)
  plt.close(fig)
  with open(os.path.join(out, f"{name}.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
  return lines


def main(argv, *, description: str, buckets: Sequence[Bucket], length: Callable[[str], int],
         score: Callable[[list[dict]], float], name: str, xlabel: str, ylabel: str,
         percent: bool) -> int:
  """`--root=R`: the report of a sweep's trials, printed and written to `R/report/<name>.*`."""
  p = argparse.ArgumentParser(description=description)
  p.add_argument("--root", required=True, help="the sweep's --root")
  args = p.parse_args(argv)
  curves = sweep_curves(args.root, buckets=buckets, length=length, score=score)
  if not curves:
    print(f"error: no trial in {args.root} has predictions_test.jsonl yet", file=sys.stderr)
    return 2
  lines = write_report(args.root, curves, buckets, name=name, xlabel=xlabel, ylabel=ylabel,
                       percent=percent)
  print("\n".join(lines))
  print(f"plot: {os.path.join(args.root, 'report', name + '.png')}")
  return 0
