r"""Peer G2P systems trained and scored by the project, on any cmudict_g2p config.

    python -m launch.baselines --data=cmudict_g2p/standard --system=phonetisaurus \
        --workdir=runs/baselines/phonetisaurus
    python -m launch.baselines --data=cmudict_g2p/standard --system=sequitur --max-order=6 \
        --budget-hours=12 --workdir=runs/baselines/sequitur
    python -m launch.report --root=runs/baselines --which=test

The systems (launch/peers.py) come with the `peers` extra: `pip install -e '.[peers]'`.
Phonetisaurus trains its default 8-gram model; Sequitur ramps its model up one order at a
time to --max-order. The command reads the config's records through attention_jax.data
(building the data set if needed), trains on train (one line per pronunciation), predicts
dev and test, and scores with attention_jax.evaluate.g2p: WER against any reference, PER
against the closest, over every word. A word the tool gives no output for is wrong, with
all of its (shortest) reference's phonemes as edits.

The workdir is a trial of its parent dir (the root): it gets the training lexicon, the
models and the tools' logs, `{dev,test}.predictions.tsv` (word<TAB>prediction, empty for
none), `times.json`, `config.json` and `result.json` (final and best: dev scores; test:
test scores; train CPU and wall seconds, also as `train_cpu_s` beside the scores), and the
root's sweep.json lists it, so `launch.report --root=<root>` tables the peers like our runs.

Sequitur's --budget-hours caps training's wall-clock time over every run of the workdir: no
order starts once it is spent, and an order still running then is stopped and dropped; the
run scores the last finished order. A rerun resumes after the last finished order (a
higher --max-order continues the ramp); Phonetisaurus reuses its model. Exit 2 with a
one-line error for an unknown data config, a missing tool or a tool that failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

from attention_jax import data
from attention_jax.data import paths
from attention_jax.data.errors import DataError
from attention_jax.evaluate.g2p import g2p_scores
from attention_jax.train import lock, provenance
from launch import manifest as manifest_lib, peers

CONFIG, SWEEP = "launch.baselines", "peers"  # what the root's sweep.json says it holds


class BaselineError(Exception):
  """A bad argument or workdir; the message is one line."""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m launch.baselines",
                              description=__doc__.split("\n")[0])
  p.add_argument("--data", required=True, help="a cmudict_g2p config, e.g. cmudict_g2p/standard")
  p.add_argument("--system", required=True, choices=sorted(peers.SYSTEMS))
  p.add_argument("--workdir", required=True, help="the run's dir; its parent is the report root")
  p.add_argument("--max-order", type=int, default=6, help="sequitur: the last order of the ramp")
  p.add_argument("--budget-hours", type=float, help="sequitur: wall-clock hours of training")
  p.add_argument("--data-dir", help="root of prepared data (default as for training)")
  p.add_argument("--manual-dir", help="the data set's manual dir (raw files)")
  return p


def sayer(workdir: str):
  """Prints a progress line and appends it, timed, to the workdir's log.txt."""
  def say(line: str) -> None:
    print(line, flush=True)
    with open(os.path.join(workdir, "log.txt"), "a") as f:
      f.write(f"{manifest_lib.now()} {line}\n")
  return say


def open_dataset(args) -> data.Dataset:
  if data.parse_name(args.data)[0] != "cmudict_g2p":
    raise DataError(f"--data={args.data}: the peers are G2P systems; give a cmudict_g2p config")
  return data.get_dataset(args.data, data_dir=args.data_dir, manual_dir=args.manual_dir)


def train_pairs(dataset) -> list[tuple[str, str]]:
  """(word, pronunciation) of every train record; the tools' lexicons split on whitespace."""
  pairs = [(r["inputs"], r["targets"]) for r in dataset.texts("train")]
  for word, _ in pairs:
    if len(word.split()) != 1:
      raise DataError(f"{dataset.name}: train input {word!r} is not one word")
  return pairs


def score(records, predicted: dict[str, str]) -> tuple[dict[str, float], int]:
  """(g2p scores over every record, number of words the tool gave nothing for)."""
  guesses = [predicted.get(r["inputs"], "") for r in records]
  return (g2p_scores(guesses, [r["references"] for r in records]),
          sum(r["inputs"] not in predicted for r in records))


def write_predictions(path: str, records, predicted: dict[str, str]) -> None:
  lines = "".join(f"{r['inputs']}\t{predicted.get(r['inputs'], '')}\n" for r in records)
  paths.atomic_write_bytes(path, lines.encode())


def predict_and_score(peer, dataset, order: int, say) -> dict:
  """split -> {'scores', 'no_output', 'words', 'wall_s'} for dev and test."""
  out = {}
  for split in ("dev", "test"):
    records, start = dataset.texts(split), time.perf_counter()
    say(f"{peer.name}: predicting {split} ({len(records):,} words) with order {order} ...")
    predicted = peer.predict([r["inputs"] for r in records], split, order)
    write_predictions(peer.path(f"{split}.predictions.tsv"), records, predicted)
    scores, missing = score(records, predicted)
    wall = time.perf_counter() - start
    out[split] = {"scores": scores, "no_output": missing, "words": len(records), "wall_s": wall}
    say(f"{peer.name}: {split} WER {100 * scores['wer']:.2f}%, PER {100 * scores['per']:.2f}% "
        f"({missing} words without output) in {wall:.0f} s")
  return out


def run_provenance(dataset, peer) -> dict:
  """What produced the scores, in the fields `launch.report` compares across rows."""
  return {"versions": {**provenance.versions(), peer.distribution: peer.version()},
          "platform": "cpu", "device_kind": "cpu", "device_count": 1, "process_count": 1,
          "git": provenance.git_state(),
          "data": provenance.data_record(dataset)}


def make_result(args, peer, dataset, order: int, splits: dict) -> dict:
  train = peer.train_time(order)
  predict_s = sum(s["wall_s"] for s in splits.values())
  # train_cpu_s beside the scores too: the report's table shows what is there.
  dev = {**splits["dev"]["scores"], "train_cpu_s": train["cpu_s"]}
  test = {**splits["test"]["scores"], "train_cpu_s": train["cpu_s"]}
  return {
      "final": dev, "best": dev, "test": test,
      "best_by": "wer", "select_eval": "dev", "step": 0, "seed": 0, "data": dataset.name,
      "system": args.system, "order": order, "tool_version": peer.version(),
      "train_cpu_s": train["cpu_s"], "train_wall_s": train["wall_s"],
      "cpu_time_s": train["cpu_s"],  # the report's CPU column: training's
      "predict_wall_s": round(predict_s, 2), "wall_time_s": round(train["wall_s"] + predict_s, 2),
      "words": {k: s["words"] for k, s in splits.items()},
      "no_output": {k: s["no_output"] for k, s in splits.items()},
      "provenance": run_provenance(dataset, peer),
  }


def command_line(args) -> list[str]:
  line = [sys.executable, "-m", "launch.baselines", f"--data={args.data}",
          f"--system={args.system}", f"--workdir={os.path.abspath(args.workdir)}",
          f"--max-order={args.max_order}"]
  extra = {"--budget-hours": args.budget_hours, "--data-dir": args.data_dir,
           "--manual-dir": args.manual_dir}
  return line + [f"{k}={v}" for k, v in extra.items() if v is not None]


def register(workdir: str, **fields) -> None:
  """Records the run as a trial of the root's sweep.json (created on first use)."""
  try:
    manifest_lib.register_run(workdir, CONFIG, SWEEP, **fields)
  except ValueError as e:  # the root holds a sweep of another kind
    raise BaselineError(str(e)) from None


def check_workdir(workdir: str, args, dataset, peer) -> None:
  """Refuses a workdir that holds another system's or data set's run; records this one."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      held = json.load(f)
    if (held.get("system"), held.get("data")) != (args.system, dataset.name):
      raise BaselineError(f"{workdir} holds a {held.get('system')} run on {held.get('data')}; "
                          "use another --workdir")
  config = {"system": args.system, "data": dataset.name, "max_order": args.max_order,
            "budget_hours": args.budget_hours, "tool_version": peer.version(),
            "command": command_line(args)}
  paths.atomic_write_bytes(path, json.dumps(config, indent=1).encode())


def run(args, dataset) -> dict:
  """Trains, predicts, scores and writes one system's run; returns its result."""
  workdir = os.path.abspath(args.workdir)
  peer = peers.SYSTEMS[args.system](workdir)
  peer.check()
  budget_s = None if args.budget_hours is None else 3600 * args.budget_hours
  with lock.hold(workdir, what="baselines workdir"):
    say = sayer(workdir)
    peer.say = say  # the tool's progress lines go to log.txt too
    check_workdir(workdir, args, dataset, peer)
    overrides = {"system": args.system, "data": dataset.name}
    register(workdir, overrides=overrides, status="running", command=command_line(args))
    try:
      order = peer.train(train_pairs(dataset), args.max_order, budget_s)
      splits = predict_and_score(peer, dataset, order, say)
      result = make_result(args, peer, dataset, order, splits)
    except BaseException as e:
      register(workdir, status="interrupted" if isinstance(e, KeyboardInterrupt) else "failed")
      raise
    paths.atomic_write_bytes(os.path.join(workdir, "result.json"),
                             json.dumps(result, indent=2, sort_keys=True).encode())
    register(workdir, overrides={**overrides, "order": order}, status="done")
    say(f"{args.system}: result {os.path.join(workdir, 'result.json')}; table: "
        f"python -m launch.report --root={os.path.dirname(workdir)} --which=test")
  return result


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if args.max_order < 1 or (args.budget_hours is not None and args.budget_hours <= 0):
    print("error: --max-order and --budget-hours must be positive", file=sys.stderr)
    return 2
  try:
    run(args, open_dataset(args))
  except (DataError, peers.ToolError, BaselineError, lock.LockError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
