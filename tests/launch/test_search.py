"""A real local Optuna search of tiny trials: one pruned (stopped early, checkpoint saved), one
failing, one interrupted and resumed with its parameters and workdir; then its report. And the
usage errors, the pruner flag and the metrics reader, without training."""
import json
import os
import signal
import subprocess
import sys
import types

import optuna
import pytest

from launch import report, search, sweep as sweep_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STEPS = 100  # the pruner often stops trial 1 only at step 30-35: it needs the steps after that
SPEC = f"tests/launch/sweep_experiment.py:steps={STEPS}"
PNG = b"\x89PNG\r\n\x1a\n"
# Enqueued in this order, so trial n gets PARAMS[n]: a fair run, a learning rate too small to
# learn (its dev loss at step 5 is far above trial 0's: the median pruner stops it), a good run
# (interrupted, then resumed) and an unknown attention (the trainer exits 2).
PARAMS = [{"attention": "luong", "optim.learning_rate": 3e-3},
          {"attention": "luong", "optim.learning_rate": 1e-5},
          {"attention": "luong", "optim.learning_rate": 1e-2},
          {"attention": "bogus", "optim.learning_rate": 3e-3}]
FLAGS = ["--search=optuna", "--trials=4", "--pruner=median:n_startup_trials=1"]


def _env(data_dir):
  env = dict(os.environ, ATTENTION_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return env


def _command(root, *args):
  return [sys.executable, "-m", "launch.sweep", f"--config={SPEC}", f"--root={root}", *FLAGS,
          *args]


def _study(root):
  return optuna.load_study(study_name=search.STUDY, storage=search.storage(str(root)))


def _train_steps(trial_dir):
  rows = [json.loads(line) for line in open(trial_dir / "metrics.jsonl")]
  return [r["step"] for r in rows if r["split"] == "train"]


def _first_run_is_interrupted_in_trial_2(root, env):
  """Runs the search until trial 2 is training, then Ctrl-C; the sweep's output."""
  os.makedirs(root / "trial-0002")
  # Trial 2's log is a pipe: reading it tells when it trains, without sleeping.
  os.mkfifo(root / "trial-0002" / "log.txt")
  sweep = subprocess.Popen(_command(root), cwd=ROOT, env=env, text=True,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  with open(root / "trial-0002" / "log.txt") as log:
    for line in log:
      if line.startswith(f"step 10/{STEPS}"):
        sweep.send_signal(signal.SIGINT)  # the sweep passes SIGTERM to the trial
        break
    log.read()  # until the trial exits
  out = sweep.communicate(timeout=600)[0]
  assert sweep.returncode == 130, out
  os.remove(root / "trial-0002" / "log.txt")
  return out


def test_search_prunes_fails_resumes_and_reports(tmp_path, shared_data_dir):
  root, env = tmp_path / "search", _env(shared_data_dir)
  os.makedirs(root)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = search.open_study(str(root), "minimize")  # the sweep continues this study
  for params in PARAMS:
    study.enqueue_trial(params)
  out = _first_run_is_interrupted_in_trial_2(root, env)
  assert "done  trial-0000" in out and "prune trial-0001 at step " in out, out
  assert "stop  trial-0002: interrupted; rerun the sweep to resume it" in out
  assert "trial-0003" not in out  # never asked: the sweep stopped
  pruned = root / "trial-0001"
  assert max(_train_steps(pruned)) < STEPS  # stopped early by SIGTERM, which saves a checkpoint
  assert "SIGTERM: saved step" in (pruned / "log.txt").read_text()
  assert any(d.isdigit() for d in os.listdir(pruned / "checkpoints"))
  assert not (pruned / "result.json").exists()
  states = [t.state for t in _study(root).trials]
  assert states[:3] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
                        optuna.trial.TrialState.RUNNING]  # trial 2 is kept for the rerun

  rerun = subprocess.run(_command(root), cwd=ROOT, env=env, text=True, capture_output=True,
                         timeout=600)
  assert rerun.returncode == 1, rerun.stdout + rerun.stderr  # trial 3 failed
  assert "resume trial-0002" in rerun.stdout and "start trial-0003" in rerun.stdout
  assert "FAIL  trial-0003: exit 2" in rerun.stdout and "trial-0001 (" not in rerun.stdout
  log = (root / "trial-0002" / "log.txt").read_text()
  assert 10 <= int(log.split("checkpoints at step ")[1].split()[0]) < STEPS
  assert json.loads((root / "trial-0002" / "result.json").read_text())["step"] == STEPS
  manifest = json.loads((root / "sweep.json").read_text())["trials"]
  assert {n: t["status"] for n, t in manifest.items()} == {
      "trial-0000": "done", "trial-0001": "pruned", "trial-0002": "done", "trial-0003": "failed"}
  assert manifest["trial-0002"]["attempts"] == 2
  assert manifest["trial-0002"]["workdir"] == str(root / "trial-0002")
  trials = _study(root).trials
  assert [t.params for t in trials] == PARAMS  # the resumed trial kept its parameters
  assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED", "COMPLETE", "FAIL"]
  for t in trials[::2]:
    best = json.loads((root / f"trial-{t.number:04d}" / "result.json").read_text())["best"]
    assert t.value == best["loss"]

  again = subprocess.run(_command(root), cwd=ROOT, env=env, text=True, capture_output=True,
                         timeout=600)
  assert again.returncode == 1, again.stdout + again.stderr
  assert not [line for line in again.stdout.splitlines() if line.startswith(("start", "resume"))]
  assert len(_study(root).trials) == 4  # nothing counted twice, nothing asked beyond --trials
  _check_report(root, trials, manifest)


def _check_report(root, trials, manifest):
  proc = subprocess.run([sys.executable, "-m", "launch.report", f"--root={root}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  rows = [line.split(" | ")[1:3] for line in proc.stdout.splitlines()
          if line.startswith("| ") and "trial-" in line]
  by_value = sorted(trials[::2], key=lambda t: t.value)
  assert rows == [[f"trial-{by_value[0].number:04d}", "complete"],
                  [f"trial-{by_value[1].number:04d}", "complete"],
                  ["trial-0001", "pruned"], ["trial-0003", "failed"]]
  assert "| **best** | " + rows[0][0] in proc.stdout
  best_command = " ".join(manifest[rows[0][0]]["command"])
  assert best_command in proc.stdout  # the best trial's command line, to run it again
  for name in ("optimization_history.png", "param_importances.png"):
    assert open(root / "report" / name, "rb").read(8) == PNG
    assert f"plot: {root}/report/{name}" in proc.stdout


def test_slurm_search_with_wait_reports_and_prunes(tmp_path, shared_data_dir):
  """Through submitit's local executor: the sweep watches the jobs, and pruning cancels one."""
  root = tmp_path / "search"
  os.makedirs(root)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = search.open_study(str(root), "minimize")
  for params in PARAMS[:2]:
    study.enqueue_trial(params)
  # Started with SIGINT ignored, as `&` in a script does (and as this test, now and then,
  # found its worker): the cancel of a pruned local job must still stop it. The shell
  # ignores it and execs the sweep (a preexec_fn would run Python in a fork of this
  # multithreaded process).
  proc = subprocess.run(
      ["sh", "-c", 'trap "" INT; exec "$@"', "sh", sys.executable, "-m", "launch.sweep",
       f"--config={SPEC}", f"--root={root}", "--search=optuna", "--trials=2",
       "--pruner=median:n_startup_trials=1", "--backend=slurm", "--cluster=local", "--wait"],
      cwd=ROOT, env=_env(shared_data_dir), text=True, capture_output=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  log = (root / "trial-0001" / "log.txt").read_text()[-3000:]
  assert "submit trial-0000: job" in proc.stdout and "pruned trial-0001" in proc.stdout, (
      proc.stdout[-3000:] + "\ntrial-0001's log:\n" + log)
  assert [t.state.name for t in _study(root).trials] == ["COMPLETE", "PRUNED"]
  assert max(_train_steps(root / "trial-0001")) < STEPS


def test_rerun_after_a_killed_sweep_tells_or_resumes_its_running_trials(tmp_path):
  """A sweep killed outright leaves its trials RUNNING in the study: the rerun tells the one
  that finished (result.json) and the one it had pruned, and resumes the other, whose
  parameters and workdir it takes from the study even when sweep.json never recorded it."""
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  args = types.SimpleNamespace(root=str(tmp_path), config=SPEC, sweep="sweep", search="optuna",
                               trials=4, pruner="none", objective=None, seeds=0, backend="local")
  plan = search.setup(args)
  study = search.open_study(str(tmp_path), "minimize")
  asked = [study.ask() for _ in range(3)]
  for trial in asked:
    plan["module"].search_space(trial)
  os.makedirs(tmp_path / "trial-0000")
  (tmp_path / "trial-0000" / "result.json").write_text(json.dumps(
      {"final": {"loss": 1.7}, "best": {"loss": 1.5}, "best_by": "loss", "step": 40}))
  rerun = search.Search(args, plan)
  rerun.manifest.update("trial-0002", status="running", pruned_at=5)  # stopped, not yet told
  rerun.reconcile()
  trials = _study(tmp_path).trials
  assert [t.state.name for t in trials] == ["COMPLETE", "RUNNING", "PRUNED"]
  assert trials[0].value == 1.5
  assert rerun.resumable == ["trial-0001"]
  record = rerun.manifest.trials["trial-0001"]
  assert record["status"] == "pending" and record["workdir"] == str(tmp_path / "trial-0001")
  assert f"--config.optim.learning_rate={asked[1].params['optim.learning_rate']}" in (
      record["command"])
  assert rerun.ask() == "trial-0003" and rerun.ask() is None  # 4 trials in all


def test_evaluations_are_reported_once_even_when_written_after_the_last_look(tmp_path):
  """Rows a look could not report (the journal raised) are reported at the next one, and
  the rows a trial wrote after the last look are reported when its end is seen."""
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  args = types.SimpleNamespace(root=str(tmp_path), config=SPEC, sweep="sweep", search="optuna",
                               trials=1, pruner="none", objective=None, seeds=0, backend="local")
  run = search.Search(args, search.setup(args))
  name = run.ask()
  os.makedirs(tmp_path / name)
  metrics = tmp_path / name / "metrics.jsonl"

  def write(*steps):
    with open(metrics, "a") as f:
      for step in steps:
        f.write(json.dumps({"step": step, "split": "train", "loss": 9.0}) + "\n")
        f.write(json.dumps({"step": step, "split": "dev", "loss": 3.0 - step / 100}) + "\n")

  write(5)
  report, run.live[name].report = run.live[name].report, None  # the next report raises
  assert run.on_poll(name) is False
  run.live[name].report = report
  write(10, 10)  # a resumed run writes a step again: reported once
  assert run.on_poll(name) is False
  write(15)
  (tmp_path / name / "result.json").write_text(json.dumps(
      {"final": {"loss": 2.85}, "best": {"loss": 2.85}, "best_by": "loss", "step": 15}))
  run.started[name] = 0.0
  run.on_end(name, 0, interrupted=False)
  (trial,) = _study(tmp_path).trials
  assert trial.state.name == "COMPLETE" and trial.value == 2.85
  assert trial.intermediate_values == {5: 2.95, 10: 2.9, 15: 2.85}


@pytest.mark.parametrize("flags, message", [
    (["--trials=0"], "--search needs --trials N with N >= 1, got 0"),
    (["--trials=2", "--pruner=bogus"], "unknown pruner 'bogus'; known: asha, hyperband, median"),
    (["--trials=2", "--pruner=median:warmup=3"], "--pruner=median:warmup=3: "),
    (["--trials=2", "--objective=bleu_score"], "unknown metric 'bleu_score'"),
    (["--trials=2", "--backend=print"], "--backend=print lists a grid"),
])
def test_bad_usage_exits_2(tmp_path, capsys, flags, message):
  code = sweep_lib.main([f"--config={SPEC}", f"--root={tmp_path}", "--search=optuna", *flags])
  assert code == 2
  assert message in capsys.readouterr().err


def test_an_experiment_without_search_space_exits_2(tmp_path, capsys):
  path = tmp_path / "grid_only.py"
  path.write_text(open(os.path.join(ROOT, "tests/launch/sweep_experiment.py")).read().split(
      "\n\ndef search_space")[0])
  code = sweep_lib.main([f"--config={path}", f"--root={tmp_path / 'r'}", "--search=optuna",
                         "--trials=2"])
  assert code == 2
  assert capsys.readouterr().err.strip() == (
      f"error: {path} has no search_space(trial) function for --search=optuna")


def test_a_grid_root_refuses_a_search(tmp_path, capsys):
  (tmp_path / "sweep.json").write_text(json.dumps(
      {"config": SPEC, "sweep": "sweep", "trials": {}}))
  code = sweep_lib.main([f"--config={SPEC}", f"--root={tmp_path}", "--search=optuna",
                         "--trials=2"])
  assert code == 2
  assert f"holds the sweep {SPEC} --sweep=sweep" in capsys.readouterr().err


def test_pruner_flag_and_metrics_tail(tmp_path):
  pruner = search.make_pruner("median:n_startup_trials=1,n_warmup_steps=2")
  assert isinstance(pruner, optuna.pruners.MedianPruner)
  assert isinstance(search.make_pruner("asha"), optuna.pruners.SuccessiveHalvingPruner)
  path = tmp_path / "metrics.jsonl"
  tail = search.MetricsTail(str(path))
  assert tail.rows() == []  # no file yet
  path.write_text('{"step": 5, "split": "dev"}\n{"step": 10, "spl')  # a row being written
  assert tail.rows() == [{"step": 5, "split": "dev"}]
  with open(path, "a") as f:
    f.write('it": "dev"}\n')
  assert tail.rows() == [{"step": 10, "split": "dev"}]
  path.write_text('{"step": 5, "split": "dev"}\n')  # rewritten shorter (a resume trims it)
  assert tail.rows() == [{"step": 5, "split": "dev"}]
