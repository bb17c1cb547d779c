r"""Hyperparameter search with Optuna: trials asked of a study, each a trainer run like a grid's.

    python -m launch.sweep --config=experiments/g2p_attention.py --search=optuna --trials=20 \
        --root=runs/g2p_search [--max-parallel=2] [--pruner=asha|hyperband|median|none] \
        [--objective=wer] [--backend=local|slurm]

The experiment file declares `search_space(trial)` beside `sweep(add)`: Optuna's
define-by-run API (`trial.suggest_float("optim.learning_rate", 1e-4, 1e-2, log=True)`),
the names being override keys exactly like `add()`'s (no dot: an experiment argument,
dotted: a config value). It may return a dict of further overrides (fixed ones, or values
derived from the suggestions). Trial <n> runs in `<root>/trial-<n>` (n zero-padded to 4).

The study ('search') lives in `<root>/optuna.journal`, Optuna's JournalStorage with a
file backend: no server, several processes and a shared filesystem (SLURM) are fine.
Rerunning the command continues it up to `--trials` trials in all. A trial's value is
its result.json's `best` scores at its `best_by` step, on `--objective` (default: the
selection metric, `train.select_by` or WER, BLEU, loss). While a trial runs the sweep
reports each new evaluation of its select evaluator (`metrics.jsonl`) to Optuna; when
the pruner says so it sends the trainer SIGTERM (it saves a checkpoint and exits) and
tells Optuna PRUNED. A crashed trial is told FAIL (neither is ever rerun; both count
towards --trials). An interrupted trial (Ctrl-C, SIGTERM or a killed sweep) stays
RUNNING in the study: the rerun re-attaches to it by its number and resumes it in the
same workdir with the same parameters, so it is counted once. On SLURM the sweep
reports and prunes only with `--wait`; without it, it submits `--max-parallel` trials
and returns, and each rerun records the ended ones and submits more.
"""
from __future__ import annotations

import ast
import json
import os
import sys
import threading
import time
import types
from typing import Any

import optuna
from optuna.trial import TrialState

from attention_jax import experiment
from attention_jax.evaluate import metrics as metrics_lib
from launch import local, slurm, sweep as sweep_lib, trials as trials_lib

STUDY = "search"  # one study per root: rerunning the command continues it
JOURNAL = "optuna.journal"
PRUNERS = {"asha": optuna.pruners.SuccessiveHalvingPruner,
           "hyperband": optuna.pruners.HyperbandPruner,
           "median": optuna.pruners.MedianPruner, "none": optuna.pruners.NopPruner}
ENDED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
STATUS = {TrialState.COMPLETE: "done", TrialState.PRUNED: "pruned", TrialState.FAIL: "failed"}


def storage(root: str) -> optuna.storages.JournalStorage:
  """The study's storage: a journal file under the root, locked for many processes."""
  backend = optuna.storages.journal.JournalFileBackend(os.path.join(root, JOURNAL))
  return optuna.storages.JournalStorage(backend)


def trial_name(number: int) -> str:
  return f"trial-{number:04d}"


def make_pruner(spec: str) -> optuna.pruners.BasePruner:
  """'asha' or 'median:n_startup_trials=1,n_warmup_steps=2' -> the Optuna pruner."""
  name, _, arg = spec.partition(":")
  if name not in PRUNERS:
    raise ValueError(f"--pruner={spec}: unknown pruner {name!r}; known: {', '.join(PRUNERS)}")
  kwargs = {}
  for key, value in trials_lib.split_spec(":" + arg)[1].items():
    if value is None:
      raise ValueError(f"--pruner={spec}: {key!r} needs a value ({key}=...)")
    try:
      kwargs[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      kwargs[key] = value
  try:
    return PRUNERS[name](**kwargs)
  except (TypeError, ValueError) as e:
    raise ValueError(f"--pruner={spec}: {e}") from None


def default_objective(config) -> str:
  """The trainer's selection metric: train.select_by, or WER, else BLEU, else the loss."""
  if config.train.select_by:
    return config.train.select_by
  scorers = config.evals[config.train.select_eval].metrics
  known = metrics_lib.scored_metrics(scorers) if scorers else []
  return next((m for m in ("wer", "bleu") if m in known), "loss")


def open_study(root: str, direction: str, pruner=None) -> optuna.Study:
  """The root's study, created on the first run; a ValueError if it runs the other way."""
  study = optuna.create_study(storage=storage(root), study_name=STUDY, direction=direction,
                              pruner=pruner, load_if_exists=True)
  if study.direction.name.lower() != direction:
    raise ValueError(f"the study in {root}/{JOURNAL} does {study.direction.name.lower()}, "
                     f"not {direction}: use another --root for this --objective")
  return study


def objective_of(result: dict, objective: str) -> float | None:
  """The trial's value: its best step's score on the objective (None when not scored)."""
  value = result.get("best", {}).get(objective)
  return float(value) if isinstance(value, (int, float)) else None


class MetricsTail:
  """The complete rows a trainer appended to its metrics.jsonl since the last look."""

  def __init__(self, path: str):
    self.path, self.offset, self.partial = path, 0, b""

  def rows(self) -> list[dict]:
    try:
      with open(self.path, "rb") as f:
        if f.seek(0, os.SEEK_END) < self.offset:  # rewritten (a resume trims it): read afresh
          self.offset, self.partial = 0, b""
        f.seek(self.offset)
        data = f.read()
    except OSError:
      return []
    self.offset += len(data)
    *lines, self.partial = (self.partial + data).split(b"\n")
    out = []
    for line in lines:
      try:
        out.append(json.loads(line))
      except ValueError:
        continue  # not a row: nothing to report
    return out


def setup(args) -> dict[str, Any]:
  """What the search needs of its flags and experiment file; a ValueError for bad usage."""
  if args.trials is None or args.trials < 1:
    raise ValueError(f"--search needs --trials N with N >= 1, got {args.trials}")
  if trials_lib.parse_seeds(args.seeds):
    raise ValueError("--seeds repeats a grid's trials; a search draws its own (drop --seeds)")
  if args.backend == "print":
    raise ValueError("--backend=print lists a grid; a search asks for its trials as it runs")
  path, arg = trials_lib.split_spec(args.config)
  module = experiment.load(path)
  if not callable(getattr(module, "search_space", None)):
    raise ValueError(f"{path} has no search_space(trial) function for --search=optuna")
  config = module.get_config(trials_lib.join_args(arg) or None)
  objective = args.objective or default_objective(config)
  direction = "maximize" if metrics_lib.higher_is_better(objective) else "minimize"
  return dict(module=module, config=config, objective=objective, direction=direction,
              pruner=make_pruner(args.pruner), described=trials_lib.describe(path))


class Search(sweep_lib.Sweep):
  """One invocation of a search: the study, its trials' records and their processes."""

  def __init__(self, args, plan: dict):
    super().__init__(args, [], plan["described"])
    self.plan, self.objective = plan, plan["objective"]
    self.study = open_study(self.root, plan["direction"], plan["pruner"])
    self.manifest.set(study=dict(name=STUDY, journal=JOURNAL, objective=self.objective,
                                 direction=plan["direction"], pruner=args.pruner,
                                 trials=args.trials, sampler=type(self.study.sampler).__name__))
    self.optuna_lock = threading.Lock()  # the study is shared by the worker threads
    self.names: list[str] = []  # every trial of the study this run knows, in number order
    self.resumable: list[str] = []
    self.tails: dict[str, MetricsTail] = {}
    self.reported: dict[str, set[int]] = {}
    self.unreported: dict[str, list[dict]] = {}
    self.live: dict[str, optuna.trial.Trial] = {}
    self.select: dict[str, str] = {}
    self.bad: str | None = None  # a search space that cannot make a config: exit 2

  # Records.

  def record(self, number: int, overrides: dict, status: str) -> str:
    """Records trial `number` (its command built like a grid trial's); returns its name.

    A trial still to run gets its config built, so a bad override fails here (ValueError);
    an ended one is only recorded (the search space may have changed since it ran)."""
    name = trial_name(number)
    trial = trials_lib.Trial(name, overrides)
    workdir = self.workdir(name)
    if status not in STATUS.values():
      config = trials_lib.build_config(self.plan["module"], self.args.config, trial)
      self.select[name] = config.train.select_eval
      self.tails[name] = MetricsTail(os.path.join(workdir, "metrics.jsonl"))
    self.manifest.update(name, index=number, number=number, overrides=overrides,
                         workdir=workdir, log=os.path.join(workdir, "log.txt"),
                         result=self.result_path(name), status=status,
                         command=trial.command(self.args.config, workdir))
    if name not in self.names:
      self.names.append(name)
    return name

  def count_line(self) -> str:
    c = {s: 0 for s in ("done", "pruned", "running", "failed")}
    for name in self.names:
      status = self.manifest.trials.get(name, {}).get("status")
      c[status] = c.get(status, 0) + 1
    left = self.args.trials - sum(c[s] for s in ("done", "pruned", "failed"))
    return (f"[{c['done']} done / {c['pruned']} pruned / {c['running']} running / "
            f"{c['failed']} failed / {max(0, left - c['running'])} left]")

  # The study on (re)start.

  def reconcile(self) -> None:
    """Matches sweep.json to the study: ended trials are recorded, RUNNING ones whose
    sweep stopped are resumed (or told the end that the last run saw but did not tell)."""
    for frozen in self.study.get_trials(deepcopy=False):
      if frozen.state == TrialState.WAITING:
        continue  # enqueued, not asked yet
      overrides = frozen.user_attrs.get("overrides", frozen.params)
      old = self.manifest.trials.get(trial_name(frozen.number), {}).get("status", "pending")
      status = STATUS.get(frozen.state, old)
      name = self.record(frozen.number, overrides, self.status_left(status, self.workdir(
          trial_name(frozen.number))))
      if frozen.state == TrialState.RUNNING:
        self.reported[name] = set(frozen.intermediate_values)
        # Optuna's Trial of a RUNNING trial: what its report() and should_prune() need.
        self.live[name] = optuna.trial.Trial(self.study, frozen._trial_id)  # pylint: disable=protected-access
        self.reattach(name, old)

  def reattach(self, name: str, old: str) -> None:
    """A RUNNING trial whose sweep ended: told how it ended, or resumed (not 'submitted':
    a SLURM job the rerun looks up)."""
    if self.finished(name) or old == "failed" or "pruned_at" in self.manifest.trials[name]:
      self.started[name] = time.perf_counter()
      self.on_end(name, 0 if old != "failed" else 1, interrupted=False)
    elif old != "submitted":
      self.resumable.append(name)

  # Asking and telling.

  def ask(self) -> str | None:
    """A new trial's name, or None when --trials are used (or the search space is bad)."""
    with self.optuna_lock:
      used = len(self.study.get_trials(deepcopy=False, states=(*ENDED, TrialState.RUNNING)))
      if self.bad or used >= self.args.trials:
        return None
      trial = self.study.ask()
      try:
        returned = self.plan["module"].search_space(trial)
        overrides = dict(trial.params, **(returned or {}))
        trial.set_user_attr("overrides", overrides)
        name = self.record(trial.number, overrides, "pending")
      except Exception as e:  # pylint: disable=broad-except  # the experiment file's code
        self.bad = f"{self.args.config}: search_space, trial {trial.number}: {e}"
        self.study.tell(trial.number, state=TrialState.FAIL)
        return None
      self.live[name], self.reported[name] = trial, set()
      return name

  def tell(self, name: str, state: TrialState, value: float | None = None) -> None:
    with self.optuna_lock:
      number = self.manifest.trials[name]["number"]
      self.study.tell(number, value if state == TrialState.COMPLETE else None, state=state,
                      skip_if_finished=True)

  def report_new(self, name: str) -> dict | None:
    """Reports the trial's evaluations not yet told to Optuna; the last one, or None.
    Rows read but not reported (a report that raised) are kept for the next look."""
    rows = self.unreported.setdefault(name, [])
    rows += [r for r in self.tails[name].rows() if r.get("split") == self.select[name]
             and isinstance(r.get("step"), int)
             and isinstance(r.get(self.objective), (int, float))]
    last = None
    with self.optuna_lock:
      while rows:
        if rows[0]["step"] not in self.reported[name]:
          self.live[name].report(rows[0][self.objective], rows[0]["step"])
          self.reported[name].add(rows[0]["step"])
        last = rows.pop(0)
    return last

  def on_poll(self, name: str) -> bool:
    """Reports the trial's new evaluations; True when the pruner stops it."""
    try:
      last = self.report_new(name)
      with self.optuna_lock:
        if last is None or not self.live[name].should_prune():
          return False
    except Exception as e:  # pylint: disable=broad-except  # never leave a trial unwatched
      print(f"warn  {name}: reading its metrics: {e}", flush=True)
      return False
    # Recorded first: a rerun after a killed sweep tells it PRUNED.
    self.manifest.update(name, pruned_at=last["step"])
    print(f"prune {name} at step {last['step']}: {self.objective} {last[self.objective]:.4g} "
          f"(pruner {self.args.pruner}); stopping it", flush=True)
    return True

  def on_end(self, name: str, code: int, interrupted: bool) -> None:
    record = self.manifest.trials[name]
    if "pruned_at" in record and not self.finished(name):
      self.started.pop(name, None)
      self.tell(name, TrialState.PRUNED)
      self.manifest.update(name, status="pruned", exit_code=code,
                           ended=sweep_lib.manifest_lib.now())
      print(f"pruned {name} at step {record['pruned_at']} {self.count_line()}", flush=True)
      return
    if name in self.live and name in self.tails:
      try:  # the evaluations written since the last look, so later trials compare with them
        self.report_new(name)
      except Exception as e:  # pylint: disable=broad-except
        print(f"warn  {name}: reading its metrics: {e}", flush=True)
    super().on_end(name, code, interrupted)
    self.tell_end(name)

  def tell_end(self, name: str) -> None:
    """Tells Optuna how the trial ended; interrupted or busy ones stay RUNNING (resumed)."""
    status = self.manifest.trials[name]["status"]
    if status == "failed":
      self.tell(name, TrialState.FAIL)
    if status != "done":
      return
    value = objective_of(sweep_lib.read_result(self.result_path(name)), self.objective)
    if value is None:
      self.manifest.update(name, status="failed", log_tail=[
          f"result.json has no best {self.objective!r}: not a metric of its select evaluator"])
      print(f"FAIL  {name}: result.json has no best {self.objective!r} {self.count_line()}",
            flush=True)
      self.tell(name, TrialState.FAIL)
      return
    self.manifest.update(name, value=value)
    self.tell(name, TrialState.COMPLETE, value)

  # Running.

  def jobs(self):
    """The local jobs: the resumed trials, then a newly asked one whenever a worker is free."""
    for name in self.resumable:
      yield self.job(name)
    while (name := self.ask()) is not None:
      yield self.job(name)

  def job(self, name: str) -> local.Job:
    record = self.manifest.trials[name]
    os.makedirs(record["workdir"], exist_ok=True)
    return local.Job(name, record["command"], record["log"], self.on_start, self.on_end,
                     workdir=record["workdir"], on_wait=self.on_wait, finished=self.finished,
                     on_poll=self.on_poll)

  def summary(self) -> None:
    done = [t for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if done:
      best = self.study.best_trial
      print(f"best  {trial_name(best.number)}: {self.objective} {best.value:.4g} "
            f"{json.dumps(best.user_attrs.get('overrides', best.params))}", flush=True)

  def run_local(self) -> bool:
    return local.run(self.jobs(), self.args.max_parallel, self.cwd)

  def run_slurm(self) -> bool:
    """Submits trials, --max-parallel at a time; with --wait, watches and prunes them too."""
    a = self.args
    folder = os.path.join(self.root, "submitit")
    params = slurm.parameters_from(a, self.plan["described"]["slurm"], self.root)
    queued = self.queued(folder)
    names = iter(self.resumable + [None])  # then ask for new ones
    inflight: dict[str, Any] = {}
    try:
      while True:
        while len(inflight) + len(queued) < a.max_parallel and (name := self.next_name(names)):
          inflight[name] = self.submit(name, folder, params)
        if not a.wait or not (inflight or queued):
          break
        self.watch_jobs(inflight, queued, folder)
    except KeyboardInterrupt:
      print("stopped waiting; the jobs run on: rerun this command to record them", flush=True)
      return False
    if not a.wait and (inflight or queued):
      print(f"{len(inflight) + len(queued)} trials in the queue; rerun this command to record "
            "their ends and submit more (reporting to the pruner needs --wait)", flush=True)
    return True

  def next_name(self, names) -> str | None:
    name = next(names, None)
    return name if name is not None else self.ask()

  def queued(self, folder: str) -> set[str]:
    """Trials an earlier run submitted: still in SLURM's queue, or recorded now."""
    out = set()
    for name in [n for n in self.names if self.manifest.trials[n].get("status") == "submitted"]:
      if slurm.pending(folder, self.manifest.trials[name].get("job_id", "")):
        out.add(name)
      else:
        self.end_unwatched(name)
    return out

  def end_unwatched(self, name: str) -> None:
    """A job that ended while no sweep watched: its result, else its log says saved or not."""
    log = self.manifest.trials[name]["log"]
    saved = any("saved step" in line for line in sweep_lib.log_tail(log))
    self.started[name] = time.perf_counter()
    if self.finished(name) or not saved:
      self.on_end(name, 0 if self.finished(name) else 1, interrupted=False)
    else:  # timed out or cancelled: it saved a checkpoint and resumes
      self.manifest.update(name, status="interrupted")
      if name not in self.resumable:
        self.resumable.append(name)

  def submit(self, name: str, folder: str, params: dict):
    record = self.manifest.trials[name]
    os.makedirs(record["workdir"], exist_ok=True)
    job = slurm.submit([(name, record["command"], record["log"])], folder, self.cwd, params,
                       cluster=self.args.cluster)[name]
    self.manifest.update(name, status="submitted", job_id=str(job.job_id),
                         attempts=record.get("attempts", 0) + 1,
                         started=sweep_lib.manifest_lib.now())
    self.started[name] = time.perf_counter()
    print(f"submit {name}: job {job.job_id} {self.count_line()}", flush=True)
    return job

  def watch_jobs(self, inflight: dict, queued: set, folder: str) -> None:
    """One look at the jobs: report and maybe prune, record the ended ones."""
    time.sleep(local.POLL_S)
    for name, job in list(inflight.items()):
      if job.done():
        self.on_end(name, slurm.exit_code(job), interrupted=False)
        del inflight[name]
      elif "pruned_at" not in self.manifest.trials[name] and self.on_poll(name):
        job.cancel(check=False)  # scancel: SIGTERM, the trainer saves before KillWait
    for name in list(queued):
      if not slurm.pending(folder, self.manifest.trials[name]["job_id"]):
        queued.discard(name)
        self.end_unwatched(name)


def run(args) -> int:
  """`launch.sweep --search=optuna`: the exit code (0, 1 some trial failed, 2, 130)."""
  optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines
  try:
    plan = setup(args)
    search = Search(args, plan)
    search.reconcile()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"search {args.config} --search=optuna: {args.trials} trials, {plan['objective']} "
        f"({plan['direction']}), pruner {args.pruner}, {len(search.resumable)} to resume "
        f"({args.backend}) {search.count_line()}", flush=True)
  sweep_lib.prepare_data([types.SimpleNamespace(config=plan["config"])])
  completed = search.run_local() if args.backend == "local" else search.run_slurm()
  search.summary()
  print(f"search {search.count_line()}: {search.manifest.path}", flush=True)
  print(f"report: python -m launch.report --root={args.root}", flush=True)
  if search.bad:
    print(f"error: {search.bad}", file=sys.stderr)
    return 2
  if not completed:
    return 130
  statuses = {search.manifest.trials[n]["status"] for n in search.names}
  return 1 if statuses & {"failed", "busy"} else 0
