"""The report of a search root (`launch.sweep --search=optuna`), for `launch.report`.

One row per trial, sorted by the objective (completed trials first, best first, then
pruned, failed and unfinished ones), with its state and parameters; the best trial's
command line; Optuna's optimisation history and parameter importances as PNGs. It reads
sweep.json and the Optuna journal under the root (data) and never imports the
experiment file. Importances use PED-ANOVA (`optuna.importance.PedAnovaImportanceEvaluator`),
which needs no package beyond Optuna (the fANOVA evaluator of older Optunas needs
scikit-learn).
"""
from __future__ import annotations

import os
import shlex
import warnings

import optuna
from optuna.trial import TrialState

from attention_jax.data import paths
from launch import report as report_lib, search

STATE = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def load_study(root: str) -> optuna.Study:
  if not os.path.exists(os.path.join(root, search.JOURNAL)):
    raise ValueError(f"{root} is a search root without its study ({search.JOURNAL})")
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  return optuna.load_study(study_name=search.STUDY, storage=search.storage(root))


def rows(study: optuna.Study, manifest: dict) -> list[dict]:
  """One dict per asked trial, sorted: completed by value (best first), pruned, the rest."""
  sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
  out = []
  for t in study.get_trials(deepcopy=False):
    if t.state == TrialState.WAITING:
      continue
    record = manifest["trials"].get(search.trial_name(t.number), {})
    steps = sorted(t.intermediate_values)
    # A pruned trial's value is its last report (Optuna's rule): shown as the last eval only.
    value = t.value if t.state == TrialState.COMPLETE else None
    out.append(dict(name=search.trial_name(t.number), number=t.number, value=value,
                    state=STATE.get(t.state, record.get("status", "running")),
                    params=t.params, command=record.get("command", []),
                    last=(t.intermediate_values[steps[-1]], steps[-1]) if steps else None,
                    seconds=t.duration.total_seconds() if t.duration else None))
  order = {"complete": 0, "pruned": 1, "failed": 3}
  return sorted(out, key=lambda r: (order.get(r["state"], 2),
                                    sign * r["value"] if r["value"] is not None else 0.0,
                                    r["number"]))


def _param(value) -> str:
  """A suggested value for the table: floats to 4 significant digits (the CSV keeps all)."""
  return f"{value:.4g}" if isinstance(value, float) else str(value)


def _number(metric: str, value: float | None) -> str:
  # The grid's number format (percent for rates), for one value.
  return "" if value is None else report_lib._fmt(metric, (value, 0.0, 1))  # pylint: disable=protected-access


def markdown(manifest: dict, study_info: dict, table: list[dict], notes: list[str]) -> str:
  metric = study_info["objective"]
  unit = f"{metric} (%)" if metric in report_lib.PERCENT else metric
  keys = list(dict.fromkeys(k for r in table for k in r["params"]))
  lines = [f"Search `{manifest['config']}` `--search=optuna`: {len(table)} of "
           f"{study_info['trials']} trials, {metric} at each run's best step "
           f"({study_info['direction']}), pruner {study_info['pruner']}.", ""]
  header = ["", "trial", "state", unit, *keys, "last eval (step)", "time (s)"]
  lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for i, r in enumerate(table):
    last = f"{_number(metric, r['last'][0])} ({r['last'][1]})" if r["last"] else ""
    cells = ["**best**" if i == 0 and r["state"] == "complete" else "", r["name"], r["state"],
             _number(metric, r["value"]), *(_param(r["params"].get(k, "-")) for k in keys), last,
             f"{r['seconds']:.0f}" if r["seconds"] is not None else ""]
    lines.append("| " + " | ".join(cells) + " |")
  best = table[0] if table and table[0]["state"] == "complete" else None
  if best:
    lines += ["", f"Best trial {best['name']} ({metric} {_number(metric, best['value'])}):", "",
              "```sh", shlex.join(best["command"]), "```"]
  lines += [""] + notes if notes else []
  return "\n".join(lines) + "\n"


def plots(study: optuna.Study, out: str) -> tuple[list[str], list[str]]:
  """Optuna's optimisation history and parameter importances: (PNG paths, notes)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from optuna.visualization import matplotlib as optuna_plots  # pylint: disable=g-import-not-at-top
  evaluator = optuna.importance.PedAnovaImportanceEvaluator()
  figures, notes = [], []
  for name, draw in (("optimization_history", optuna_plots.plot_optimization_history),
                     ("param_importances",
                      lambda s: optuna_plots.plot_param_importances(s, evaluator=evaluator))):
    try:
      with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'experimental' and few-trials warnings
        ax = draw(study)
    except (ValueError, RuntimeError, ZeroDivisionError) as e:
      notes.append(f"{name.replace('_', ' ')}: not drawn: {e}")
      continue
    path = os.path.join(out, f"{name}.png")
    ax.figure.set_size_inches(7, 4)
    ax.figure.tight_layout()
    ax.figure.savefig(path, dpi=120)
    plt.close(ax.figure)
    figures.append(path)
  return figures, notes


def report(root: str, manifest: dict, metric: str | None, out: str | None) -> dict:
  """Writes results.md, results.csv and the plots of a search root; their paths and text."""
  info = manifest.get("study", {})
  if metric and metric != info.get("objective"):
    raise ValueError(f"--metric={metric}: a search's table is by its objective, "
                     f"{info.get('objective')}")
  study = load_study(root)
  table = rows(study, manifest)
  if not table:
    raise ValueError(f"{root}: the search has no trials yet")
  out = out or os.path.join(root, "report")
  os.makedirs(out, exist_ok=True)
  figures, notes = plots(study, out)
  warnings = report_lib.provenance_warnings(
      root, [r["name"] for r in table if r["state"] == "complete"])
  text = markdown(manifest, info, table, notes)
  if warnings:
    text += "\n".join(report_lib.warning_lines(warnings)[1:]) + "\n"
  paths.atomic_write_bytes(os.path.join(out, "results.md"), text.encode())
  keys = list(dict.fromkeys(k for r in table for k in r["params"]))
  report_lib.write_csv(os.path.join(out, "results.csv"),
                       ["trial", "state", info["objective"], *keys, "seconds"],
                       [[r["name"], r["state"], "" if r["value"] is None else r["value"],
                         *(r["params"].get(k, "") for k in keys), r["seconds"] or ""]
                        for r in table])
  best = table[0] if table[0]["state"] == "complete" else None
  return {"markdown": text, "dir": out, "figures": figures, "files": "results.md, results.csv",
          "warnings": warnings,
          "best_command": shlex.join(best["command"]) if best else None}
