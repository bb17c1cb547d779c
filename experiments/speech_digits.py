r"""Connected spoken digits: attention, CTC and both (Kim, Hori & Watanabe 2017).

    python -m attention_jax.main --config=experiments/speech_digits.py --workdir=runs/speech \
        --config.data.manual_dir=DIR       # DIR: FSDD's recordings/ (see docs/data.md)
    python -m attention_jax.main --config=experiments/speech_digits.py:smoke --workdir=/tmp/s

Arguments (after the colon): score ('location_aware', Chorowski et al. 2015's hybrid
attention, or 'additive', content only), ctc_weight (lambda of lambda * CTC + (1 - lambda)
* attention; 0: attention alone, 1: CTC alone), encoder ('lstm' or 'transformer'), unseen
(train without one speaker and test on them: data spoken_digits/unseen_speaker, evaluators
`test` on the held-out speaker and `test_seen`), digits (targets '731' instead of words),
steps, test (score the best dev step on the test splits at the end, with the joint beam
search), smoke.

Sweep (`python -m launch.sweep --config=experiments/speech_digits.py:unseen,test
--root=runs/speech_digits`): `sweep`, ctc_weight in {0, 0.2, 0.5, 0.8, 1} x {content,
location-aware} (CTC alone has no attention: one score only).
"""
import argparse
import json
import os
import sys

import ml_collections
from ml_collections import config_dict
import numpy as np

from attention_jax import experiment

DEFAULTS = dict(score="location_aware", ctc_weight=0.2, encoder="lstm", unseen=False,
                digits=False, steps=1000, test=False, smoke=False)


def get_config(arg=None):
  args = experiment.parse_arg(arg, DEFAULTS)
  c = experiment.base_config()
  config = "unseen_speaker" if args["unseen"] else "digits" if args["digits"] else "words"
  c.data.update(name=f"spoken_digits/{config}", batch_size=32, eval_batch_size=100)
  # Kim et al. 2017's best lambda on WSJ and CHiME-4 was 0.2; SpecAugment's masks are
  # narrower than Park et al.'s (F=27 of 80 bins, T=100) for 1-3 s utterances.
  c.task = ml_collections.ConfigDict(dict(
      name="speech", label_smoothing=0.0, ctc_weight=args["ctc_weight"],
      ctc_decode_weight=config_dict.placeholder(float),
      freq_masks=2, freq_width=10, time_masks=2, time_width=20,
      sort_window=8))  # batches of similar lengths: frames are padded to a power of two
  c.model = ml_collections.ConfigDict(dict(
      name="speech", dtype="float32", attention="bahdanau", score=args["score"],
      encoder_type=args["encoder"], bidirectional=args["encoder"] == "lstm", cell="lstm",
      num_layers=1, tgt_embed_dim=32, hidden_dim=128, attention_dim=64, frontend_channels=16,
      dropout_rate=0.1))
  c.optim.update(learning_rate=2e-3, warmup_steps=200)
  c.train.update(steps=args["steps"], checkpoint_every=500, select_by="cer")
  # Dev every 100 steps on a fixed sample of 200 of its 500 utterances: learning curves
  # and the best step, at a few seconds per evaluation.
  c.evals.dev = experiment.evaluator(every=100, examples=200, metrics="asr,sequence_accuracy",
                                     beam_alpha=0.0, heatmaps=2)
  if args["test"]:
    test = experiment.test_evaluator(c.evals.dev)
    c.evals.test = experiment.evaluator(**dict(test, decode="beam"))
    if args["unseen"]:
      c.evals.test_seen = experiment.evaluator(**dict(c.evals.test, split="test_seen"))
  if args["smoke"]:
    experiment.apply_smoke(c)
    if not args["unseen"]:
      c.data.name = "spoken_digits/small"  # built in seconds
    c.model.update(hidden_dim=16, attention_dim=8, tgt_embed_dim=8, frontend_channels=4)
  return c


def sweep(add):
  """lambda in {0, 0.2, 0.5, 0.8, 1} x {content (additive), location-aware} scores, 3 seeds.
  Seed by seed, and within a seed attention alone, the even mix and CTC alone first: a
  sweep stopped early still has Kim et al.'s three-way comparison for every seed it began."""
  for seed in range(3):
    for weight in (0.0, 0.5, 1.0, 0.2, 0.8):
      for score in (("location_aware",) if weight == 1 else ("additive", "location_aware")):
        add(score=score, ctc_weight=weight, seed=seed)


# ---- `python experiments/speech_digits.py --root=R`: how fast each configuration learns ----

CER_TARGETS = (0.30, 0.15)  # dev CER levels whose first step is reported
# The alignment counts as monotonic from the first dev eval with `monotonic` at or above this:
# half of the decoder steps peaked and not moving back (a first sweep never reached 0.8).
MONOTONIC = 0.5


def _first_step(rows: list[dict], key: str, reached) -> int | None:
  return next((r["step"] for r in rows if key in r and reached(r[key])), None)


def trial_summary(workdir: str) -> dict | None:
  """One finished trial: first steps reaching each CER target and MONOTONIC, its dev curve,
  and the test scores of its best dev step; None while it has no result."""
  result_path = os.path.join(workdir, "result.json")
  if not os.path.exists(result_path):
    return None
  with open(result_path) as f:
    result = json.load(f)
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    dev = [r for r in map(json.loads, f) if r.get("split") == "dev"]
  out = {f"steps_cer_{t:.2f}": _first_step(dev, "cer", lambda v, t=t: v <= t)
         for t in CER_TARGETS}
  out["steps_monotonic"] = _first_step(dev, "monotonic", lambda v: v >= MONOTONIC)
  out["final_monotonic"] = dev[-1]["monotonic"] if dev else None
  out["curve"] = [(r["step"], r["cer"], r["monotonic"]) for r in dev]
  out["best_dev_cer"] = result["best"]["cer"]
  for split in ("test", "test_seen"):
    for metric in ("cer", "wer"):
      out[f"{split}_{metric}"] = result.get(split, {}).get(metric)
  return out


def _mean(values) -> str:
  values = [v for v in values if v is not None]
  return f"{sum(values) / len(values):.0f}" if values else "never"


def _fraction(values) -> str:
  values = [v for v in values if v is not None]
  return f"{sum(values) / len(values):.2f}" if values else "-"


def _pct(values) -> str:
  values = [100 * v for v in values if v is not None]
  if not values:
    return "-"
  return f"{np.mean(values):.1f}" + (f" +- {np.std(values):.1f}" if len(values) > 1 else "")


def convergence_table(groups: dict) -> str:
  """Markdown: one row per (score, ctc_weight), means over the seeds that finished."""
  head = ("| score | ctc_weight | seeds | steps to dev CER <= 30% | <= 15% | steps to monotonic "
          f"(>= {MONOTONIC}) | final monotonic | best dev CER | test CER (unseen speaker) | "
          "test WER | test_seen CER | test_seen WER |")
  lines = [head, "|" + " --- |" * 12]
  for (score, weight), runs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    steps = [_mean(r[f"steps_cer_{t:.2f}"] for r in runs) for t in CER_TARGETS]
    cells = [score if weight < 1 else "(none: CTC only)", f"{weight:g}", str(len(runs)), *steps,
             _mean(r["steps_monotonic"] for r in runs) if weight < 1 else "-",
             _fraction(r["final_monotonic"] for r in runs) if weight < 1 else "-",
             *(_pct(r[k] for r in runs) for k in ("best_dev_cer", "test_cer", "test_wer",
                                                  "test_seen_cer", "test_seen_wer"))]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def plot_curves(groups: dict, path: str) -> None:
  """Dev CER and monotonicity against steps, mean over seeds, one line per configuration."""
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(11, 4.2))
  cer_ax, mono_ax = fig.subplots(1, 2)
  for (score, weight), runs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
    length = min(len(r["curve"]) for r in runs)
    curve = np.mean([np.array(r["curve"][:length], float) for r in runs], axis=0)
    style = "-" if score == "location_aware" or weight == 1 else "--"
    label = f"lambda={weight:g}" + ("" if weight == 1 else f", {score}")
    cer_ax.plot(curve[:, 0], 100 * np.minimum(curve[:, 1], 1.0), style, label=label)
    if weight < 1:
      mono_ax.plot(curve[:, 0], curve[:, 2], style, label=label)
  cer_ax.set(xlabel="step", ylabel="dev CER (%, capped at 100)", title="dev CER")
  mono_ax.set(xlabel="step", ylabel="monotonic", title="alignment monotonicity", ylim=(0, 1))
  cer_ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description="Convergence of a speech_digits sweep.")
  parser.add_argument("--root", required=True, help="the sweep's root")
  parser.add_argument("--out", default=None, help="default: <root>/report")
  args = parser.parse_args(argv)
  with open(os.path.join(args.root, "sweep.json")) as f:
    trials = json.load(f)["trials"].values()
  groups = {}
  for trial in trials:
    summary = trial_summary(trial["workdir"])
    if summary is not None:
      o = trial["overrides"]
      key = (o.get("score", DEFAULTS["score"]), float(o.get("ctc_weight", DEFAULTS["ctc_weight"])))
      groups.setdefault(key, []).append(summary)
  if not groups:
    print(f"error: no finished trial under {args.root}", file=sys.stderr)
    return 1
  out = args.out or os.path.join(args.root, "report")
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, "convergence.md"), "w") as f:
    f.write(convergence_table(groups))
  plot_curves(groups, os.path.join(out, "dev_cer_curves.png"))
  print(f"wrote {out}/convergence.md and {out}/dev_cer_curves.png")
  return 0


if __name__ == "__main__":
  sys.exit(main())
