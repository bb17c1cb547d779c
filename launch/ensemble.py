r"""Evaluate an ensemble of trained runs: their pooled distribution, token by token.

    python -m launch.ensemble --members=runs/std/a,runs/std/b,runs/std/c \
        --workdir=runs/ensembles/abc [--checkpoint=best] [--combine=probs|log_probs] \
        [--evals=dev,test,dev_beam,test_beam]
    python -m launch.ensemble --members "runs/std/attention=luong,seed=0" \
        "runs/std/attention=luong,seed=1" --workdir=runs/ensembles/seeds  # a sweep's trials
    python -m launch.ensemble --members runs/std/a@30000+30500+31000 \
        --workdir=runs/ensembles/a-last3  # checkpoint averaging: one model
    python -m launch.ensemble --members runs/std/a@best --decode=beam --beam-size=8 \
        --beam-alpha=1.0 --evals=dev --workdir=runs/redecode/a-k8-a1  # one run, another beam
    python -m launch.report --root=runs/ensembles --which=test_beam

The members are text-to-text runs on one dataset: their task and data configs must be
equal (but for where each read its data files, and the label smoothing and batch size,
which only shape training); their models may differ (an RNN and a Transformer, one layer
and two), each member restored with its own model and optimizer (a moving average
included).
--combine pools their distributions: probs (the default) their mean probability,
log_probs their mean log-probability renormalised; params instead averages their
parameters into one model (members of one model config). Each evaluator named in --evals
(default: every one of the first member's config) runs once over the ensemble
(`tasks.ensemble`): its split and sample, decoding (greedy, or one beam search over the
pooled distribution) and metrics, as the members were scored, with every prediction written
to predictions_<name>.jsonl.
--checkpoint picks each member's parameters: best (the default: each member's best dev
step, as its own test scores used), latest or a step; a member given as DIR@WHICH uses
WHICH instead, and DIR@A+B+C the mean of those checkpoints' parameters (checkpoint
averaging: alone, one model; `a@30000+30500+31000 b@best` pools an averaged run with
another). Two checkpoints or more in all, or one re-decoded (below). A run that is a
member more than once counts its training time once.
--decode, --beam-size, --beam-alpha and --split decode every evaluator in --evals that way
instead of as its config says (greedy dev evaluators by beam search, another beam width or
length penalty, another split): a search over decoding on dev, or a teacher's outputs on
train (`launch.distill_g2p`), for one checkpoint as well as for several.

The workdir gets `config.json` (the first member's, with `ensemble`: the members, their
models' names, checkpoints and steps, --combine and any decoding changes), `log.txt` and
`result.json` like a training run's: one entry per evaluator, `final` and `best` the first
evaluator's, `wall_time_s` the members' training wall time summed plus this evaluation's
(what the row cost), and `cpu_time_s` the same in CPU time where every member recorded it.
It is registered as a trial of its parent dir (the decoding changes among its overrides),
so `launch.report` tables ensembles together. Exit 2 with one line for members whose task
or data configs differ (naming the key), a member without that checkpoint, an unknown
evaluator or split, a beam setting for an evaluator that decodes greedily, or a workdir
that already holds a result.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import jax
import numpy as np

from attention_jax import data, host_memory, predict, tasks
from attention_jax.data import paths
from attention_jax.predict_io import PredictError
from attention_jax.tasks.ensemble import COMBINES, EnsembleTask
from attention_jax.train import evaluators, lock, partition, provenance, steps, validate
from attention_jax.train import metrics as metrics_lib
from attention_jax.train.loop import Output
from launch import manifest as manifest_lib

CONFIG, SWEEP = "launch.ensemble", "ensembles"  # what the root's sweep.json says it holds
SHARED = ("task", "data")  # config sections every member must have equal...
PLACES = ("data.data_dir", "data.manual_dir")  # ...but where each run read its files
# ...and what only shapes training (evaluation batches by data.eval_batch_size)
TRAINING_ONLY = ("task.label_smoothing", "data.batch_size", "model.dropout_rate")


class EnsembleError(Exception):
  """A bad argument, member or workdir; the message is one line."""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m launch.ensemble",
                              description=__doc__.split("\n")[0])
  p.add_argument("--members", required=True, nargs="+",
                 help="workdirs of trained runs, comma- or space-separated (a sweep's trial "
                      "dirs have commas in their names: give those space-separated), each "
                      "optionally DIR@WHICH (best, latest or a step) for its checkpoint, or "
                      "DIR@A+B for the mean of checkpoints A and B")
  p.add_argument("--workdir", required=True, help="the ensemble's dir; its parent, the root")
  p.add_argument("--checkpoint", default="best", help="best, latest or a step, for every member")
  p.add_argument("--combine", default="probs", choices=COMBINES + ("params",),
                 help="pool the members' mean probability (probs) or their mean "
                      "log-probability, renormalised (log_probs), or average their "
                      "parameters into one model (params: checkpoint averaging)")
  p.add_argument("--evals", default="", help="comma-separated evaluator names (default: all)")
  p.add_argument("--decode", choices=("greedy", "beam"),
                 help="decode every evaluator in --evals this way (default: as configured)")
  p.add_argument("--beam-size", type=int, help="beams, for every beam evaluator in --evals")
  p.add_argument("--beam-alpha", type=float,
                 help="GNMT length penalty, for every beam evaluator in --evals (0: none)")
  p.add_argument("--split", help="decode every evaluator in --evals on this split instead "
                                 "(train: a teacher's outputs for launch.distill_g2p)")
  return p


def decoding(args) -> dict:
  """The evaluator keys that --decode, --beam-size, --beam-alpha and --split change."""
  changes = {k: v for k, v in (("decode", args.decode), ("beam_size", args.beam_size),
                               ("beam_alpha", args.beam_alpha), ("split", args.split))
             if v is not None}
  if changes.get("beam_size", 1) < 1:
    raise EnsembleError(f"--beam-size must be at least 1, got {args.beam_size}")
  if not 0 <= changes.get("beam_alpha", 0) < float("inf"):
    raise EnsembleError(f"--beam-alpha must be a number at least 0, got {args.beam_alpha}")
  return changes


def _check_decoding(config, names: list[str], changes: dict) -> None:
  """A split of the members' data set; beam settings only where the evaluator (after
  --decode) searches a beam."""
  if "split" in changes:
    known = data.registry.DATASETS[data.registry.parse_name(config.data.name)[0]].splits
    if changes["split"] not in known:
      raise EnsembleError(f"--split={changes['split']!r} is not a split of "
                          f"{config.data.name}; known: {', '.join(known)}")
  beam = {"beam_size", "beam_alpha"} & set(changes)
  for name in names:
    decode = changes.get("decode", config.evals[name].decode)
    if beam and decode != "beam":
      flags = " and ".join("--" + k.replace("_", "-") for k in sorted(beam))
      raise EnsembleError(f"{flags} set a beam search, but evals.{name} decodes {decode!r}: "
                          f"add --decode=beam or leave {name} out of --evals")


def _differing_key(a, b, prefix: str) -> str | None:
  """The first dotted key under which two config dicts differ, or None."""
  if isinstance(a, dict) and isinstance(b, dict):
    for key in sorted(set(a) | set(b)):
      found = _differing_key(a.get(key), b.get(key), f"{prefix}.{key}")
      if found:
        return found
    return None
  return None if a == b or prefix in PLACES + TRAINING_ONLY else prefix


def _spec(value: str) -> tuple[str, str | None]:
  """(dir, checkpoint or None) of one member, DIR or DIR@WHICH (a directory whose own name
  has an @ stands as it is)."""
  head, at, which = value.rpartition("@")
  return (head, which) if at and not os.path.isdir(value) else (value, None)


def member_specs(values: list[str]) -> list[tuple[str, str | None]]:
  """--members: (dir, checkpoint or None) per member. A value that is an existing directory
  (before any @WHICH) stands as it is, else it is a comma-separated list."""
  return [_spec(m) for v in values
          for m in ([v] if os.path.isdir(_spec(v)[0]) else v.split(",")) if m]


def load_members(dirs: list[str], combine: str = "probs") -> list:
  """The members' configs, checked to share SHARED (and, to average their parameters, the
  model config but for its dropout)."""
  try:
    configs = [predict.load_config(d) for d in dirs]
  except PredictError as e:
    raise EnsembleError(str(e)) from None
  sections = SHARED + (("model",) if combine == "params" else ())
  first = configs[0].to_dict()
  for d, c in zip(dirs[1:], configs[1:]):
    for section in sections:
      key = _differing_key(first.get(section), c.to_dict().get(section), section)
      if key:
        raise EnsembleError(f"{d} differs from {dirs[0]} in {key}: the members of an "
                            f"ensemble share their {' and '.join(sections)} configs")
  return configs


def find_checkpoints(dirs: list[str], whiches: list[str]) -> list[list[tuple[str, int]]]:
  """Each member's checkpoints, (dir name, step) each, for its --checkpoint or @WHICH
  (several for @A+B+C)."""
  try:
    return [[predict.find_checkpoint(d, w) for w in which.split("+")]
            for d, which in zip(dirs, whiches)]
  except PredictError as e:
    raise EnsembleError(str(e)) from None


def _averaged(params: list):
  """The mean of parameter trees (accumulated in float64), in their own dtype; a single tree
  as it is (every member of one checkpoint would otherwise be copied twice)."""
  if len(params) == 1:
    return params[0]
  return jax.tree.map(
      lambda *xs: np.mean(np.stack(xs), axis=0, dtype=np.float64).astype(xs[0].dtype), *params)


def restore(configs: list, member_tasks: list, dirs: list[str], found: list, say) -> tuple:
  """The members' parameters, each restored with its own model and optimizer (one that kept
  a moving average has it in its optimizer state); a member of several checkpoints gets
  their mean."""
  params = []
  for config, task, d, checkpoints in zip(configs, member_tasks, dirs, found):
    try:
      params.append(_averaged([predict.restore_params(config, task, d, name, step)
                               for name, step in checkpoints]))
    except PredictError as e:
      raise EnsembleError(str(e)) from None
    say(f"member {d}: " + ", ".join(f"{name} checkpoint, step {step}"
                                    for name, step in checkpoints))
  return tuple(params)


def _evaluators(config, names: list[str], task, workdir: str, changes: dict) -> dict:
  """The named evaluators of the members' config, with `changes` to their decoding, run
  once each over the ensemble."""
  mesh = partition.make_mesh(config.train.mesh_shape)
  eval_step = jax.jit(functools.partial(steps.eval_step, loss_fn=task.loss))
  out = Output(workdir, metrics_lib.MetricWriter(workdir), metrics_lib.Progress(0, 0, 1), True)
  made = {}
  for name in names:
    cfg = config.evals[name].copy_and_resolve_references()
    cfg.update(heatmaps=0, predictions=True, **changes)
    made[name] = evaluators.Evaluator(name, cfg, task, mesh, eval_step,
                                      config.data.eval_batch_size, out)
  return made


def _member_result(workdir: str) -> dict:
  """A member's result.json, or {} for one that has none (a run still training)."""
  path = os.path.join(workdir, "result.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def check(args) -> tuple:
  """(workdir, members' dirs, their configs, evaluator names, each member's --checkpoint or
  @WHICH, the checkpoints found, the decoding changes): every check that needs no data,
  made before anything is written."""
  workdir = os.path.abspath(args.workdir)
  changes = decoding(args)
  specs = member_specs(args.members)
  dirs = [os.path.abspath(d) for d, _ in specs]
  whiches = [which or args.checkpoint for _, which in specs]
  count = sum(len(w.split("+")) for w in whiches)
  if count < 2 and not changes:  # one checkpoint as it was decoded: its own run's scores
    raise EnsembleError(f"--members needs two checkpoints or more (runs, or DIR@A+B), or "
                        f"one with --decode, --beam-size, --beam-alpha or --split; got {count}")
  configs = load_members(dirs, args.combine)
  config = configs[0]
  names = [n for n in args.evals.split(",") if n] or list(config.evals)
  unknown = [n for n in names if n not in config.evals]
  if unknown:
    raise EnsembleError(f"--evals: {', '.join(unknown)} not among the members' evaluators "
                        f"({', '.join(config.evals)})")
  _check_decoding(config, names, changes)
  found = find_checkpoints(dirs, whiches)
  if os.path.exists(os.path.join(workdir, "result.json")):
    raise EnsembleError(f"{workdir} already holds a result.json; use another --workdir")
  return workdir, dirs, configs, names, whiches, found, changes


def _task_and_params(configs: list, dataset, dirs: list[str], found, combine: str, say):
  """(what evaluates, its parameters): the ensemble and the members' parameters, or for
  combine 'params' or a single member the first member's task and the members' mean
  parameters."""
  member_tasks = [tasks.build_task(c, dataset) for c in configs]
  params = restore(configs, member_tasks, dirs, found, say)
  if combine == "params" or len(params) == 1:
    return member_tasks[0], _averaged(params)
  try:
    return EnsembleTask(member_tasks, combine), params
  except ValueError as e:
    raise EnsembleError(str(e)) from None


def evaluate(configs: list, dirs: list[str], names: list[str], found, workdir: str,
             say, dataset, prov: dict, combine: str = "probs",
             changes: dict | None = None) -> dict:
  """Builds the ensemble on `dataset`, runs its evaluators and returns result.json's
  contents (`prov`: the data set's provenance, collected before anything was written)."""
  start, start_cpu = time.time(), time.process_time()
  config = configs[0]
  task, params = _task_and_params(configs, dataset, dirs, found, combine, say)
  evals = _evaluators(config, names, task, workdir, changes or {})
  runs = [_member_result(d) for d in dict.fromkeys(dirs)]  # a run's training counts once
  steps_ = [[step for _, step in member] for member in found]
  last = max(max(member) for member in steps_)
  count = sum(map(len, found))
  what = (f"ensemble of {len(dirs)}" if combine != "params" and len(dirs) > 1
          else f"the average of {count} checkpoints" if count > 1 else f"step {last}")
  result = {}
  for name, ev in evals.items():
    say(f"{ev.describe()}, {what}")
    result[name] = ev.run(params, last)
    say(f"{name}: " + ", ".join(f"{k} {v:.4g}" for k, v in result[name].items()))
  first = result[names[0]]
  result.update(final=first, best=first, best_by=validate.selection_metric(config, task),
                select_eval=names[0], step=last, members=dirs,
                member_steps=[m[0] if len(m) == 1 else m for m in steps_],
                num_params=int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))),
                eval_wall_s=time.time() - start,
                wall_time_s=sum(r.get("wall_time_s", 0.0) for r in runs) + time.time() - start,
                seed=None, provenance=prov)
  cpu = [r.get("cpu_time_s") for r in runs]
  if None not in cpu:  # else a member trained before CPU time was recorded: no total
    result["cpu_time_s"] = sum(cpu) + time.process_time() - start_cpu
  return result


def run(args) -> dict:
  """Checks, then evaluates the ensemble into its workdir and registers it in the root."""
  workdir, dirs, configs, names, whiches, found, changes = check(args)
  config = configs[0]
  dataset = data.from_config(config.data)
  prov = provenance.collect(dataset)  # reads every record: damage stops it before any write
  os.makedirs(workdir, exist_ok=True)
  with lock.hold(workdir, what="ensemble workdir"), \
       open(os.path.join(workdir, "log.txt"), "a") as log:

    def say(line: str) -> None:
      print(line, file=sys.stderr, flush=True)
      log.write(f"{manifest_lib.now()} {line}\n")
      log.flush()

    record = dict(config.to_dict(), ensemble={
        "members": dirs, "models": [c.model.name for c in configs], "combine": args.combine,
        "checkpoints": whiches,
        "steps": [[s for _, s in m] if len(m) > 1 else m[0][1] for m in found],
        **({"decoding": changes} if changes else {})})
    paths.atomic_write_bytes(os.path.join(workdir, "config.json"),
                             json.dumps(record, indent=1).encode())
    manifest_lib.register_run(workdir, CONFIG, SWEEP, status="running",
                              overrides={"members": len(dirs),
                                         "checkpoint": ",".join(dict.fromkeys(whiches)),
                                         "combine": args.combine,
                                         "models": "+".join(c.model.name for c in configs),
                                         **changes})
    try:
      result = evaluate(configs, dirs, names, found, workdir, say, dataset, prov,
                        args.combine, changes)
    except BaseException as e:
      status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
      manifest_lib.register_run(workdir, CONFIG, SWEEP, status=status)
      raise
    paths.atomic_write_bytes(os.path.join(workdir, "result.json"),
                             json.dumps(result, indent=2, sort_keys=True).encode())
    manifest_lib.register_run(workdir, CONFIG, SWEEP, status="done")
    say(f"result {os.path.join(workdir, 'result.json')}; table: python -m launch.report "
        f"--root={os.path.dirname(workdir)} --which={names[-1]}")
  return result


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  host_memory.keep_freed_memory()
  try:
    run(args)
  except (EnsembleError, data.DataError, lock.LockError, ValueError) as e:
    print(f"launch.ensemble: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
