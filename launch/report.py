r"""Turn a sweep's trials into one table and plots.

    python -m launch.report --root=runs/sweep [--metric=wer] [--which=final|best|test] [--out=DIR]

Reads `<root>/sweep.json` and every finished trial's `result.json` and
`metrics.jsonl`. Writes to `<root>/report/` (or --out):
  results.md / results.csv  one row per configuration: the varied
                            hyperparameters, each metric as mean +- std over
                            seeds (n = seeds), the best row marked; its
                            wall time and CPU time (all the run's threads;
                            a peer's: its training), means over seeds
  trials.csv                one row per finished trial, the raw numbers
  <metric>_vs_<key>.png     the metric against each varied hyperparameter
  learning_curves.png       train loss and the eval metric against steps
                            (none when no trial has two points: ensembles)
Rates (WER, PER, accuracies, error rates) are shown in percent. An experiment
file may declare `REFERENCES`, a list of dicts (source, where, metric, value,
note; values in the units shown here), printed beside our best value. The
sweep records them in sweep.json when it starts: the report reads only data
and never imports the experiment file (whoever can edit a results directory
must not get code run by whoever makes its report).

A search root (`launch.sweep --search=optuna`) gets one row per trial sorted by
the objective, with its state (complete, pruned, failed), the best trial's
command line, and Optuna's `optimization_history.png` and `param_importances.png`
(launch/search_report.py; it reads the study's journal, data, not code).
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys

import numpy as np

from attention_jax.data import paths
from attention_jax.evaluate.metrics import HIGHER_IS_BETTER  # the trainer's best-step rule
from attention_jax.train import provenance
from launch import manifest as manifest_lib

PERCENT = ("wer", "per", "cer", "wer_no_stress", "per_no_stress", "accuracy",
           "sequence_accuracy", "token_error_rate")


UNRECORDED = ("Published numbers: not recorded in sweep.json (a sweep from before they were); "
              "rerun the sweep command to record them (finished trials are skipped).")


def _load_json(path: str):
  with open(path) as f:
    return json.load(f)


def collect(root: str, which: str = "final") -> tuple[dict, list[dict]]:
  """(the manifest, one dict per finished trial: name, overrides, metrics, result)."""
  path = os.path.join(root, manifest_lib.FILENAME)
  if not os.path.exists(path):
    raise ValueError(f"{root} has no {manifest_lib.FILENAME}: not a sweep root")
  manifest = _load_json(path)
  rows = []
  for name, record in manifest_lib.in_sweep_order(manifest["trials"]):
    result_path = os.path.join(root, name, "result.json")
    if not os.path.exists(result_path):
      continue
    result = _load_json(result_path)
    if which not in result:  # `test`: a run without a test evaluator
      continue
    rows.append({"name": name, "overrides": record.get("overrides", {}),
                 "metrics": result[which], "result": result,
                 "curve": os.path.join(root, name, "metrics.jsonl")})
  return manifest, rows


def recorded_references(manifest: dict) -> list[dict] | None:
  """The published numbers the sweep recorded (None for a sweep from before it did).

  Recorded data only: importing the file named in sweep.json would run whatever it holds.
  """
  recorded = manifest.get("experiment")
  if not isinstance(recorded, dict) or "references" not in recorded:
    return None
  references = recorded["references"]
  if not isinstance(references, list) or not all(
      isinstance(r, dict) and {"source", "metric", "value"} <= set(r) for r in references):
    raise ValueError(f"sweep.json: experiment.references is not a list of records with "
                     f"source, metric and value")
  return references


def varied_keys(rows: list[dict]) -> list[str]:
  """Override keys (not seed) in the order first added."""
  keys = {}
  for row in rows:
    keys.update({k: None for k in row["overrides"] if k != "seed"})
  return list(keys)


def group(rows: list[dict], keys: list[str]) -> list[dict]:
  """Configurations (trials equal but for the seed), in first-seen order, with stats."""
  groups: dict[tuple, dict] = {}
  for row in rows:
    config = tuple(str(row["overrides"].get(k, "-")) for k in keys)
    groups.setdefault(config, {"config": dict(zip(keys, config)), "rows": []})["rows"].append(row)
  metrics = sorted({m for row in rows for m in row["metrics"]})
  out = []
  for g in groups.values():
    stats = {}
    for m in metrics:
      values = [r["metrics"][m] for r in g["rows"] if m in r["metrics"]]
      if values:
        stats[m] = (float(np.mean(values)), float(np.std(values)), len(values))
    steps = [r["result"]["step"] for r in g["rows"]]
    cpu = [r["result"].get("cpu_time_s") for r in g["rows"]]  # absent in older results
    out.append(dict(g, stats=stats, n=len(g["rows"]), steps=max(steps),
                    wall_s=float(np.mean([r["result"]["wall_time_s"] for r in g["rows"]])),
                    cpu_s=None if None in cpu else float(np.mean(cpu))))
  return out


def _scale(metric: str) -> float:
  return 100.0 if metric in PERCENT else 1.0


def _fmt(metric: str, stat) -> str:
  if stat is None:
    return ""
  mean, std, n = stat
  s = _scale(metric)
  digits = 2 if s == 100.0 else 4
  text = f"{mean * s:.{digits}f}"
  return text + (f" ± {std * s:.{digits}f}" if n > 1 else "")


def best_index(groups: list[dict], metric: str) -> int | None:
  scored = [(i, g["stats"][metric][0]) for i, g in enumerate(groups) if metric in g["stats"]]
  if not scored:
    return None
  sign = -1.0 if HIGHER_IS_BETTER.get(metric, False) else 1.0
  return min(scored, key=lambda s: sign * s[1])[0]


def chosen_index(root: str, groups: list[dict], keys: list[str], metric: str,
                 best_by: str) -> int | None:
  """The row of `groups` whose configuration is best by `metric` in the runs' `best_by`
  scores (dev, say, while the table shows test: select on one split, report another);
  None when that configuration has no row here."""
  by_groups = group(collect(root, best_by)[1], keys)
  by = best_index(by_groups, metric)
  if by is None:
    raise ValueError(f"--best-by={best_by!r}: no finished trial has {metric} in its "
                     f"{best_by!r} scores")
  return next((i for i, g in enumerate(groups) if g["config"] == by_groups[by]["config"]), None)


def provenance_warnings(root: str, names: list[str]) -> list[str]:
  """Where the finished runs `names` of one table disagree on library versions, platform,
  device kind or data (their result.json's provenance)."""
  records = {}
  for name in names:
    path = os.path.join(root, name, "result.json")
    if os.path.exists(path):
      records[name] = _load_json(path).get("provenance")
  return provenance.mismatches(records)


def warning_lines(warnings: list[str]) -> list[str]:
  return ["", "Warning: these rows come from different setups.", "",
          *(f"- {w}" for w in warnings)] if warnings else []


def markdown(manifest: dict, groups: list[dict], keys: list[str], metrics: list[str],
             metric: str, which: str, references: list[dict] | None,
             failed: list[str], warnings: list[str], best: int | None,
             best_by: str | None) -> str:
  """The table with the row `best` marked: best by `metric` in the table's own scores, or
  in `best_by`'s when given."""
  unit = lambda m: f"{m} (%)" if m in PERCENT else m
  marked = (f"best {metric} marked" if best_by is None
            else f"marked: the row best by {best_by} {metric}")
  lines = [f"Sweep `{manifest['config']}` `--sweep={manifest['sweep']}`: {which} eval metrics, "
           f"mean ± std over n seeds; {marked}.", ""]
  header = ["", *keys, *map(unit, metrics), "n", "steps run", "time (s)", "CPU (s)"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for i, g in enumerate(groups):
    cells = ["**best**" if i == best else "", *(g["config"][k] for k in keys),
             *(_fmt(m, g["stats"].get(m)) for m in metrics), str(g["n"]), str(g["steps"]),
             f"{g['wall_s']:.0f}", "-" if g["cpu_s"] is None else f"{g['cpu_s']:.0f}"]
    lines.append("| " + " | ".join(cells) + " |")
  if references:
    lines += ["", "Published numbers (other splits or setups: compare orderings and rough levels):",
              "", "| source | where | metric | published | ours (best row) | note |",
              "|---|---|---|---|---|---|"]
    for ref in references:
      m = ref["metric"]
      row = best_index(groups, m) if best_by is None else best  # the marked row's
      ours = _fmt(m, groups[row]["stats"].get(m)) if row is not None else "n/a"
      lines.append(f"| {ref['source']} | {ref.get('where', '')} | {unit(m)} | {ref['value']} | "
                   f"{ours} | {ref.get('note', '')} |")
  if references is None:
    lines += ["", UNRECORDED]
  if failed:
    lines += ["", "Not finished: " + ", ".join(failed)]
  lines += warning_lines(list(warnings))
  return "\n".join(lines) + "\n"


def write_csv(path: str, header: list[str], rows: list[list]) -> None:
  buf = io.StringIO()
  writer = csv.writer(buf)
  writer.writerow(header)
  writer.writerows(rows)
  paths.atomic_write_bytes(path, buf.getvalue().encode())


def differing(groups: list[dict], keys: list[str]) -> list[str]:
  """The keys whose value is not the same in every configuration: what the plots compare."""
  return [k for k in keys if len({g["config"][k] for g in groups}) > 1]


def plot_label(overrides: dict, varying: list[str]) -> str:
  """A configuration's name in the plots: its overrides that differ between configurations (the
  others are in the table), or `defaults` for the configuration that sets none of them."""
  return ",".join(f"{k}={overrides[k]}" for k in varying if k in overrides) or "defaults"


def _axis_label(metric: str) -> str:
  return f"{metric} (%)" if _scale(metric) == 100.0 else metric


def plots(out: str, groups: list[dict], keys: list[str], metric: str, rows: list[dict]) -> list[str]:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  written = []
  s = _scale(metric)
  varying = differing(groups, keys)
  for key in varying:
    points = [g for g in groups if g["config"][key] != "-" and metric in g["stats"]]
    if len(points) < 2:  # one point: nothing to compare
      continue
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(points) + 2), 3.5))
    labels = [plot_label({k: v for k, v in g["config"].items() if v != "-"}, varying)
              for g in points]
    means = [g["stats"][metric][0] * s for g in points]
    stds = [g["stats"][metric][1] * s for g in points]
    ax.errorbar(range(len(points)), means, yerr=stds, fmt="o", capsize=4)
    ax.set_xticks(range(len(points)), labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(_axis_label(metric))
    ax.set_title(f"{metric} by {key}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = os.path.join(out, f"{metric}_vs_{key.replace('.', '_')}.png")
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
  curves = learning_curves(out, groups, metric, rows, varying)
  return written + ([curves] if curves else [])


def _curves(rows: list[dict], metric: str) -> list[tuple[dict, list, list]]:
  """(row, train loss points, selection-eval metric points) of each row with a curve."""
  s = _scale(metric)
  out = []
  for row in rows:
    if not os.path.exists(row["curve"]):
      continue
    records = [json.loads(line) for line in open(row["curve"])]
    train = [(r["step"], r["loss"]) for r in records if r["split"] == "train"]
    # The selection evaluator's rows ('eval' in runs made before evaluators had names).
    select = row["result"].get("select_eval", "eval")
    evals = [(r["step"], r[metric] * s) for r in records if r["split"] == select and metric in r]
    out.append((row, train, evals))
  return out


def learning_curves(out: str, groups: list[dict], metric: str, rows: list[dict],
                    varying: list[str]) -> str | None:
  """learning_curves.png: train loss and the eval metric against steps; None (no figure)
  when no row has two points of either (ensembles: one evaluation each, no curve)."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  curves = _curves(rows, metric)
  path = os.path.join(out, "learning_curves.png")
  if not any(len(train) > 1 or len(evals) > 1 for _, train, evals in curves):
    if os.path.exists(path):  # an earlier report's, of rows that are not these
      os.remove(path)
    return None
  fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11, 4 + 0.15 * len(groups)),
                                           layout="constrained")
  colors: dict[str, str] = {}  # one colour per configuration; its seeds share it
  for row, train, evals in curves:
    config = manifest_lib.config_label(row["overrides"])
    first = config not in colors
    color = colors.setdefault(config, f"C{len(colors) % 10}")
    style = dict(color=color, lw=1, label=plot_label(row["overrides"], varying) if first else None)
    if train:
      ax_loss.plot(*zip(*train), **style)
    if evals:
      ax_metric.plot(*zip(*evals), marker="o", ms=3, **style)
  ax_loss.set(xlabel="step", ylabel="train loss", yscale="log")
  ax_metric.set(xlabel="step", ylabel=f"eval {_axis_label(metric)}")
  for ax in (ax_loss, ax_metric):
    ax.grid(alpha=0.3)
  # The panel that labelled more curves: a run may have train records but no eval yet.
  handles, labels = max((ax.get_legend_handles_labels() for ax in (ax_loss, ax_metric)),
                        key=lambda hl: len(hl[1]))
  if len(labels) > 1:  # below both panels, so long labels do not squeeze them
    fig.legend(handles, labels, loc="outside lower center", fontsize=7,
               ncol=1 if max(map(len, labels)) > 60 else min(3, len(labels)))
  fig.savefig(path, dpi=120)
  plt.close(fig)
  return path


def report(root: str, metric: str | None = None, which: str = "final",
           out: str | None = None, best_by: str | None = None) -> dict:
  """Writes the report files; returns their paths and the markdown. The row marked best
  is the best by `metric` in the `best_by` scores (default: the `which` scores shown)."""
  path = os.path.join(root, manifest_lib.FILENAME)
  if os.path.exists(path) and _load_json(path).get("search"):
    from launch import search_report  # pylint: disable=g-import-not-at-top  # imports this module
    return search_report.report(root, _load_json(path), metric, out)
  manifest, rows = collect(root, which)
  if not rows:
    raise ValueError(f"{root}: no finished trial with {which!r} scores yet (result.json)")
  metric = metric or rows[0]["result"].get("best_by", "loss")
  metrics = sorted({m for row in rows for m in row["metrics"]})
  if metric not in metrics:
    raise ValueError(f"--metric={metric!r} is not in the results; known: {', '.join(metrics)}")
  metrics = [metric] + [m for m in metrics if m != metric]
  keys = varied_keys(rows)
  groups = group(rows, keys)
  references = recorded_references(manifest)
  failed = [f"{n} ({r.get('status')}, exit {r.get('exit_code')})"
            for n, r in sorted(manifest["trials"].items()) if r.get("status") != "done"]
  best_by = None if best_by == which else best_by
  best = (best_index(groups, metric) if best_by is None
          else chosen_index(root, groups, keys, metric, best_by))
  out = out or os.path.join(root, "report")
  os.makedirs(out, exist_ok=True)
  warnings = provenance_warnings(root, [r["name"] for r in rows])
  text = markdown(manifest, groups, keys, metrics, metric, which, references, failed, warnings,
                  best, best_by)
  paths.atomic_write_bytes(os.path.join(out, "results.md"), text.encode())
  header = keys + [f"{m}_{s}" for m in metrics for s in ("mean", "std")] + ["n", "best"]
  write_csv(os.path.join(out, "results.csv"), header, [
      [g["config"][k] for k in keys]
      + [v for m in metrics for v in (g["stats"][m][:2] if m in g["stats"] else ("", ""))]
      + [g["n"], int(i == best)] for i, g in enumerate(groups)])
  write_csv(os.path.join(out, "trials.csv"), ["trial", *keys, "seed", *metrics, "step"], [
      [r["name"], *(r["overrides"].get(k, "-") for k in keys), r["result"].get("seed"),
       *(r["metrics"].get(m, "") for m in metrics), r["result"]["step"]] for r in rows])
  figures = plots(out, groups, keys, metric, rows)
  return {"markdown": text, "dir": out, "figures": figures, "warnings": warnings}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m launch.report", description=__doc__.split("\n")[0])
  p.add_argument("--root", required=True, help="the sweep's --root")
  p.add_argument("--metric", help="the metric that picks the best row (default: the runs' best_by)")
  p.add_argument("--which", default="final",
                 help="final eval, the eval step best by the runs' best_by metric, or an "
                      "end evaluator's scores at that step: test, dev_beam, test_beam")
  p.add_argument("--best-by", help="mark the row best by --metric in these scores instead "
                                   "(dev or dev_beam: select on dev, show --which=test)")
  p.add_argument("--out", help="output directory (default <root>/report)")
  args = p.parse_args(argv)
  try:
    done = report(args.root, args.metric, args.which, args.out, args.best_by)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for warning in done.get("warnings", []):
    print(f"warning: {warning}", file=sys.stderr)
  print(done["markdown"])
  print(f"report: {done['dir']}/{done.get('files', 'results.md, results.csv, trials.csv')}")
  for path in done["figures"]:
    print(f"plot: {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
