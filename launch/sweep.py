r"""Run an experiment's sweep: every trial in its own directory, locally, on SLURM, or printed.

    python -m launch.sweep --config=experiments/g2p_attention.py:smoke=True --root=runs/sweep \
        [--sweep=sweep] [--backend=local|slurm|print] [--max-parallel=2] [--seeds=3]
    python -m launch.sweep --config=experiments/g2p_attention.py --search=optuna --trials=20 \
        --root=runs/search [--pruner=asha|hyperband|median|none] [--objective=wer]

(`--search=optuna`: launch/search.py.)

Trial directories are `<root>/<overrides>` (e.g. `attention=luong,score=dot,seed=1`),
each the trial's trainer workdir with its output in `log.txt`; `<root>/sweep.json`
records the trials, their status and results. Rerunning the same command skips
finished trials (their files are never touched), resumes interrupted ones from
their checkpoints and retries failed ones. A failing trial is recorded (exit
code, last log lines) and the others go on. The sweep holds `<root>/.lock` for
its life: a second sweep on the root is refused. A trial whose trainer is still
running (its workdir lock held, e.g. after the sweep was killed) is waited for,
never started twice. Exit code: 0 when every trial has finished, 1 when some
failed or could not start, 2 for a bad sweep or a root in use, 130 when
interrupted. `--keep=DIR` copies each finished trial's result, metrics and config to DIR
and restores them from there into a root without them (a fresh clone): commit DIR, and a
sweep cut short on one machine goes on from it on another (launch/keep.py).
Then: `python -m launch.report --root=<root>`.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time

from attention_jax.train import lock
from launch import keep, local, manifest as manifest_lib, slurm, trials as trials_lib

TAIL_LINES = 20


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m launch.sweep", description=__doc__.split("\n")[0])
  p.add_argument("--config", required=True, help="experiments/<name>.py[:key=value,...]")
  p.add_argument("--sweep", default="sweep", help="the sweep function in the experiment file")
  p.add_argument("--root", required=True, help="directory of the sweep's trials")
  p.add_argument("--backend", choices=("local", "slurm", "print"), default="local")
  p.add_argument("--max-parallel", type=int, default=1,
                 help="local: trials at once; a search on SLURM: jobs at once")
  p.add_argument("--seeds", default="0",
                 help="repeat every trial with seeds 0..K-1 (K), or A..B-1 (A:B)")
  p.add_argument("--keep", help="a directory to commit: each finished trial's result, metrics "
                 "and config are copied there, and restored from there into a root that lacks "
                 "them (launch/keep.py)")
  g = p.add_argument_group("search (the experiment's search_space(trial); see launch/search.py)")
  g.add_argument("--search", choices=("optuna",), help="search instead of the grid --sweep")
  g.add_argument("--trials", type=int, help="trials in the study, in all runs together")
  g.add_argument("--pruner", default="asha",
                 help="asha (default), hyperband, median or none[:key=value,...]")
  g.add_argument("--objective", help="metric to optimise (default: the runs' best_by)")
  g = p.add_argument_group("slurm (defaults from the experiment's SLURM dict)")
  g.add_argument("--partition")
  g.add_argument("--gpus", type=int, help="GPUs per node (one process each)")
  g.add_argument("--nodes", type=int)
  g.add_argument("--time", type=int, help="minutes per trial")
  g.add_argument("--cpus", type=int, help="CPUs per task")
  g.add_argument("--wait", action="store_true", help="wait for the jobs and record their ends")
  g.add_argument("--cluster", default=None, help=argparse.SUPPRESS)  # 'local' in tests
  return p


def log_tail(path: str, lines: int = TAIL_LINES) -> list[str]:
  try:
    with open(path, errors="replace") as f:
      return f.read().splitlines()[-lines:]
  except OSError:
    return []


def read_result(path: str) -> dict | None:
  """A finished run's result.json, or None (none yet, or not a complete result)."""
  try:
    with open(path) as f:
      result = json.load(f)
  except (OSError, ValueError):
    return None
  return result if isinstance(result, dict) and "final" in result else None


def _headline(result: dict) -> str:
  final, key = result.get("final", {}), result.get("best_by", "loss")
  shown = [k for k in (key, "per", "bleu", "sequence_accuracy") if k in final][:2]
  return ", ".join(f"{k} {final[k]:.4g}" for k in dict.fromkeys(shown))


class Sweep:
  """One invocation: the trials, their manifest and the progress lines."""

  def __init__(self, args, trials, described: dict):
    self.args, self.trials = args, trials
    self.root = os.path.abspath(args.root)
    self.cwd = os.getcwd()
    os.makedirs(self.root, exist_ok=True)
    self.manifest = manifest_lib.Manifest(self.root, args.config, args.sweep,
                                          getattr(args, "search", None))
    # What the report needs from the experiment file, so that it never imports it.
    self.manifest.set(experiment=dict(described, recorded=manifest_lib.now()))
    self.started: dict[str, float] = {}
    self.keep = getattr(args, "keep", None)  # --keep (a search has none)

  def workdir(self, name: str) -> str:
    return os.path.join(self.root, name)

  def result_path(self, name: str) -> str:
    return os.path.join(self.workdir(name), "result.json")

  def register(self) -> list[trials_lib.Trial]:
    """Records every trial; returns those still to run (no result.json)."""
    todo = []
    for index, trial in enumerate(self.trials):
      workdir = self.workdir(trial.name)
      record = self.manifest.trials.get(trial.name, {})
      fields = dict(index=index, overrides=trial.overrides, workdir=workdir,
                    log=os.path.join(workdir, "log.txt"), result=self.result_path(trial.name),
                    command=trial.command(self.args.config, workdir))
      if os.path.exists(self.result_path(trial.name)):
        self.manifest.update(trial.name, status="done", **fields)
        if self.keep:  # finished by a sweep without --keep, or on SLURM
          keep.save(self.keep, self.root, trial.name)
        print(f"skip  {trial.name}: finished", flush=True)
      else:
        fields["status"] = self.status_left(record.get("status", "pending"), workdir)
        self.manifest.update(trial.name, **fields)
        todo.append(trial)
    return todo

  def status_left(self, status: str, workdir: str) -> str:
    """A rerun's view of a trial left `running` by a sweep killed outright: still running
    when its trainer holds the workdir lock (it is waited for), else interrupted."""
    if status != "running":
      return status
    return "running" if lock.held_by(workdir) else "interrupted"

  def count_line(self) -> str:
    c = self.manifest.counts(t.name for t in self.trials)
    return f"[{c['done']} done / {c['running']} running / {c['failed']} failed / {c['left']} left]"

  def on_start(self, name: str, cores) -> None:
    record = self.manifest.trials[name]
    checkpoints = os.path.join(self.workdir(name), "checkpoints")
    resuming = os.path.isdir(checkpoints) and any(s.isdigit() for s in os.listdir(checkpoints))
    self.manifest.update(name, status="running", started=manifest_lib.now(), cores=list(cores),
                         attempts=record.get("attempts", 0) + 1)
    self.started[name] = time.perf_counter()
    how = "resume" if resuming else "start"
    print(f"{how:5s} {name} (cores {','.join(map(str, cores))}) {self.count_line()}", flush=True)

  def on_wait(self, name: str, holder: str) -> None:
    self.manifest.update(name, status="running", waited_for=holder)
    print(f"wait  {name}: its workdir is in use by {holder}; waiting for that trainer to end "
          f"instead of starting a second one {self.count_line()}", flush=True)

  def finished(self, name: str) -> bool:
    return os.path.exists(self.result_path(name))

  def on_end(self, name: str, code: int, interrupted: bool) -> None:
    seconds = time.perf_counter() - self.started.pop(name, time.perf_counter())
    log = self.manifest.trials[name]["log"]
    # A complete result.json is a finished trial, whatever the exit code says.
    result = read_result(self.result_path(name))
    if result is not None:
      self.manifest.update(name, status="done", exit_code=code, ended=manifest_lib.now())
      if self.keep:
        keep.save(self.keep, self.root, name)
      print(f"done  {name} in {seconds:.0f}s: {_headline(result)} {self.count_line()}", flush=True)
    elif local.refused(code, log):  # another process held its workdir: not a failure to retry
      self.manifest.update(name, status="busy", exit_code=code, ended=manifest_lib.now(),
                           log_tail=log_tail(log))
      last = next((line for line in reversed(log_tail(log)) if line.strip()), "")
      print(f"busy  {name}: {last}; rerun the sweep once it has ended {self.count_line()}",
            flush=True)
    elif interrupted or code == 0:  # the trainer saved on SIGTERM and exits 0 without a result
      self.manifest.update(name, status="interrupted", exit_code=code, ended=manifest_lib.now())
      print(f"stop  {name}: interrupted; rerun the sweep to resume it {self.count_line()}",
            flush=True)
    else:
      tail = log_tail(log)
      self.manifest.update(name, status="failed", exit_code=code, ended=manifest_lib.now(),
                           log_tail=tail)
      last = next((line for line in reversed(tail) if line.strip()), "")
      print(f"FAIL  {name}: exit {code} after {seconds:.0f}s: {last} (log: {log}) "
            f"{self.count_line()}", flush=True)

  def run_local(self, todo) -> bool:
    jobs = [local.Job(t.name, self.manifest.trials[t.name]["command"],
                      self.manifest.trials[t.name]["log"], self.on_start, self.on_end,
                      workdir=self.workdir(t.name), on_wait=self.on_wait, finished=self.finished)
            for t in todo]
    for t in todo:
      os.makedirs(self.workdir(t.name), exist_ok=True)
    return local.run(jobs, self.args.max_parallel, self.cwd)

  def run_slurm(self, todo, defaults: dict) -> None:
    a = self.args
    folder = os.path.join(self.root, "submitit")
    queued = [t for t in todo if self.manifest.trials[t.name].get("job_id")
              and self.manifest.trials[t.name].get("status") == "submitted"
              and slurm.pending(folder, self.manifest.trials[t.name]["job_id"])]
    for t in queued:
      print(f"queued {t.name}: job {self.manifest.trials[t.name]['job_id']}", flush=True)
    todo = [t for t in todo if t not in queued]
    params = slurm.parameters_from(a, defaults, self.root)
    for t in todo:
      os.makedirs(self.workdir(t.name), exist_ok=True)
    jobs = slurm.submit([(t.name, self.manifest.trials[t.name]["command"],
                          self.manifest.trials[t.name]["log"]) for t in todo],
                        folder, self.cwd, params, cluster=a.cluster)
    for name, job in jobs.items():
      record = self.manifest.trials[name]
      self.manifest.update(name, status="submitted", job_id=str(job.job_id),
                           attempts=record.get("attempts", 0) + 1, started=manifest_lib.now())
      self.started[name] = time.perf_counter()
      print(f"submit {name}: job {job.job_id}", flush=True)
    if not a.wait:
      print(f"submitted {len(jobs)} jobs; rerun this command to update their status", flush=True)
      return
    for name, job in jobs.items():
      self.on_end(name, slurm.exit_code(job), interrupted=False)


def prepare_data(todo) -> None:
  """Builds each data set the trials read once, here, so parallel trials never build it twice."""
  from attention_jax import data  # pylint: disable=g-import-not-at-top
  wanted = {}  # one config per distinct data block (SentencePiece models are trained here too)
  for t in todo:
    wanted.setdefault(json.dumps(t.config.data.to_dict(), sort_keys=True), t.config.data)
  for key in sorted(wanted):
    try:
      data.from_config(wanted[key])
    except data.DataError as e:  # each trial will report it in its own log
      print(f"data: {wanted[key].name}: {e}", flush=True)


def print_commands(args, trials) -> None:
  """--backend=print: the shell lines the local backend would run."""
  root = os.path.abspath(args.root)
  groups = local.core_groups(args.max_parallel, local.available_cores())
  for i, t in enumerate(trials):
    workdir = os.path.join(root, t.name)
    line = local.shell_line(t.command(args.config, workdir), groups[i % len(groups)])
    quoted = shlex.quote(workdir)
    print(f"mkdir -p {quoted} && {line} >> {quoted}/log.txt 2>&1")


def run(args, trials, described: dict) -> int:
  """Registers, runs (local) or submits (slurm) the trials; the exit code."""
  try:
    sweep = Sweep(args, trials, described)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if sweep.keep:
    for name in keep.restore(sweep.keep, sweep.root, [t.name for t in trials]):
      print(f"kept  {name}: restored from {sweep.keep}", flush=True)
  todo = sweep.register()
  print(f"sweep {args.config} --sweep={args.sweep}: {len(trials)} trials, {len(todo)} to run "
        f"({args.backend}) {sweep.count_line()}", flush=True)
  completed = True
  if todo:
    prepare_data(todo)
  if todo and args.backend == "local":
    completed = sweep.run_local(todo)
  elif todo:
    sweep.run_slurm(todo, described["slurm"])
  print(f"sweep {sweep.count_line()}: {sweep.manifest.path}", flush=True)
  print(f"report: python -m launch.report --root={args.root}", flush=True)
  if not completed:
    return 130
  statuses = {sweep.manifest.trials[t.name]["status"] for t in trials}
  return 1 if statuses & {"failed", "busy"} else 0


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    # Started with SIGINT ignored (e.g. `&` in a non-interactive shell): every child would
    # inherit that, and submitit cancels a local job by SIGINT to its controller, so a
    # pruned trial would run on to its end. A handler is not inherited across exec.
    signal.signal(signal.SIGINT, signal.default_int_handler)
  if args.max_parallel < 1:
    print(f"error: --max-parallel must be at least 1, got {args.max_parallel}", file=sys.stderr)
    return 2
  if args.search and args.keep:
    print("error: --keep is for grid sweeps: a search's state is its Optuna study, in the root",
          file=sys.stderr)
    return 2
  if args.search:
    from launch import search  # pylint: disable=g-import-not-at-top  # it imports this module
    work = lambda: search.run(args)
  else:
    try:
      trials = trials_lib.expand(args.config, args.sweep, args.seeds)
      described = trials_lib.describe(trials_lib.split_spec(args.config)[0])
    except ValueError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    if args.backend == "print":
      print_commands(args, trials)
      return 0
    work = lambda: run(args, trials, described)
  try:
    # For the sweep's whole life (a slurm one: while it submits and records): one per root.
    with lock.hold(os.path.abspath(args.root), what="sweep root"):
      return work()
  except lock.LockError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main())
