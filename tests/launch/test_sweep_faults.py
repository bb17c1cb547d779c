"""Faults of the sweep side: two processes on one root or one trial, a sweep killed with
`kill -9`, a trainer refused its workdir, and a report asked to read a doctored results
directory."""
import hashlib
import json
import os
import socket
import subprocess
import sys
import time
import types

import pytest

from attention_jax.train import lock
from launch import report, sweep as sweep_lib, trials as trials_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = "tests/launch/sweep_experiment.py"
LONG = "evals.dev.every=30,train.checkpoint_every=5,train.steps=60"
SINGLE = "attention=luong,score=general"
HOST = socket.gethostname()


@pytest.fixture(scope="module")
def data_dir(shared_data_dir):
  return shared_data_dir


def _command(*args):
  return [sys.executable, "-m", "launch.sweep", f"--config={SPEC}", *args]


def _env(data_dir):
  env = dict(os.environ, ATTENTION_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  return env


def _sweep(data_dir, *args):
  return subprocess.run(_command(*args), cwd=ROOT, env=_env(data_dir), text=True,
                        capture_output=True, timeout=600)


def _popen(data_dir, *args):
  return subprocess.Popen(_command(*args), cwd=ROOT, env=_env(data_dir), text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _alive(pid: int) -> bool:
  """Whether `pid` runs (a zombie nobody has reaped yet has ended)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0] != "Z"
  except OSError:
    return False


def _wait_gone(pid: int, seconds: float = 120) -> None:
  deadline = time.monotonic() + seconds
  while _alive(pid):
    assert time.monotonic() < deadline, f"process {pid} still runs {seconds}s after its sweep died"
    time.sleep(0.1)


def _read_until(stream, fragment: str) -> list[str]:
  """Lines of `stream` up to and including the first holding `fragment`."""
  lines = []
  for line in stream:
    lines.append(line)
    if fragment in line:
      return lines
  raise AssertionError(f"{fragment!r} never came; got:\n{''.join(lines)}")


def test_killed_sweep_takes_its_trial_down_a_second_sweep_is_refused_and_a_rerun_resumes(
    data_dir, tmp_path):
  root = tmp_path / "sweep"
  trial = root / LONG
  os.makedirs(trial)
  os.mkfifo(trial / "log.txt")  # read: tells when training is under way, without sleeping
  first = _popen(data_dir, f"--root={root}", "--sweep=long")
  with open(trial / "log.txt") as log:
    _read_until(log, "step 10/60")
    trainer = int((trial / lock.LOCK_NAME).read_text().split()[0])  # the trainer holds its workdir
    first.kill()  # kill -9: no handler runs in the sweep
    first.wait(timeout=60)
    tail = log.read()  # until the trial closes its end: it saves on the SIGTERM it got
  _wait_gone(trainer)
  assert json.loads((root / "sweep.json").read_text())["trials"][LONG]["status"] == "running"
  assert not (trial / "result.json").exists()
  assert "SIGTERM: saved step" in tail and "step 60/60" not in tail
  os.remove(trial / "log.txt")

  rerun = _sweep(data_dir, f"--root={root}", "--sweep=long")
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  assert rerun.stdout.count(f"resume {LONG}") == 1 and "start " not in rerun.stdout
  log = (trial / "log.txt").read_text()
  assert 10 <= int(log.split("checkpoints at step ")[1].split()[0]) < 60
  assert json.loads((trial / "result.json").read_text())["step"] == 60
  steps = [json.loads(line)["step"] for line in open(trial / "metrics.jsonl")
           if json.loads(line)["split"] == "train"]
  assert steps == sorted(set(steps)) and steps[-1] == 60  # one set of rows, none twice
  record = json.loads((root / "sweep.json").read_text())["trials"][LONG]
  assert record["status"] == "done" and record["attempts"] == 2


def test_rerun_waits_for_a_live_trainer_and_starts_none_a_second_sweep_is_refused(
    data_dir, tmp_path):
  """The trial's workdir is held (as by a trainer a killed sweep left running): the sweep
  waits for it, and when that run has finished, records it without starting a trainer.
  Meanwhile a second sweep on the root is refused."""
  root = tmp_path / "sweep"
  trial = root / SINGLE
  with lock.hold(str(trial)):
    # As a sweep killed with its trial running left it.
    (root / "sweep.json").write_text(json.dumps(
        {"config": SPEC, "sweep": "single", "trials": {SINGLE: {"status": "running"}}}))
    proc = _popen(data_dir, f"--root={root}", "--sweep=single")
    lines = _read_until(proc.stdout, f"wait  {SINGLE}: its workdir is in use by "
                                      f"PID {os.getpid()} on {HOST}")
    assert "1 to run (local) [0 done / 1 running / 0 failed / 0 left]" in lines[0]
    assert not any(line.startswith(("start", "resume")) for line in lines)
    assert json.loads((root / "sweep.json").read_text())["trials"][SINGLE]["status"] == "running"
    second = _sweep(data_dir, f"--root={root}", "--sweep=single")
    assert second.returncode == 2, second.stdout + second.stderr
    assert second.stderr.strip() == (
        f"error: sweep root '{root}' is in use by PID {proc.pid} on {HOST} "
        f"(lock file {root}/{lock.LOCK_NAME}); wait for it to end or stop it")
    assert second.stdout == ""
    result = {"final": {"loss": 0.5}, "best_by": "loss", "step": 6, "wall_time_s": 1.0}
    (trial / "result.json").write_text(json.dumps(result))  # that run finishes, then ends
  out = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, "".join(lines) + out
  assert f"done  {SINGLE} in" in out and "[1 done / 0 running / 0 failed / 0 left]" in out
  assert not (trial / "log.txt").exists()  # no trainer was started
  assert json.loads((root / "sweep.json").read_text())["trials"][SINGLE]["status"] == "done"


def test_trainer_refused_its_workdir_is_busy_not_failed(data_dir, tmp_path):
  """Through SLURM (submitit's local executor), which starts the trainer without looking."""
  root = tmp_path / "sweep"
  trial = root / SINGLE
  with lock.hold(str(trial)):
    proc = _sweep(data_dir, f"--root={root}", "--sweep=single", "--backend=slurm",
                  "--cluster=local", "--wait")
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert f"busy  {SINGLE}: error: workdir '{trial}' is in use by PID {os.getpid()} on {HOST}" in (
      proc.stdout)
  assert "rerun the sweep once it has ended" in proc.stdout and "FAIL" not in proc.stdout
  record = json.loads((root / "sweep.json").read_text())["trials"][SINGLE]
  assert record["status"] == "busy" and record["exit_code"] == 2
  assert not (trial / "result.json").exists() and not (trial / "metrics.jsonl").exists()


def test_a_finished_result_is_done_whatever_the_exit_code(tmp_path):
  args = types.SimpleNamespace(root=str(tmp_path), config=SPEC, sweep="single")
  trial = trials_lib.Trial(SINGLE, {"attention": "luong", "score": "general"})
  sweep = sweep_lib.Sweep(args, [trial], {"references": []})
  sweep.register()
  result = {"final": {"loss": 0.5}, "best_by": "loss", "step": 6}
  os.makedirs(tmp_path / SINGLE)
  (tmp_path / SINGLE / "result.json").write_text(json.dumps(result))
  sweep.on_end(SINGLE, 1, interrupted=False)  # e.g. a crash while the process exited
  record = json.loads((tmp_path / "sweep.json").read_text())["trials"][SINGLE]
  assert record["status"] == "done" and record["exit_code"] == 1


def test_sweep_records_the_experiments_hash_and_references():
  path = "experiments/g2p_attention.py"
  described = trials_lib.describe(os.path.join(ROOT, path))
  module = trials_lib.experiment.load(os.path.join(ROOT, path))
  assert described["references"] == module.REFERENCES and described["references"]
  assert described["sha256"] == hashlib.sha256(open(os.path.join(ROOT, path), "rb").read()
                                                ).hexdigest()


def _doctored_root(tmp_path, recorded: dict | None):
  """A finished sweep root whose sweep.json names an experiment file that writes a marker."""
  marker = tmp_path / "marker"
  evil = tmp_path / "evil.py"
  evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                  "REFERENCES = [dict(source='Evil', metric='loss', value=0.0)]\n")
  root = tmp_path / "root"
  os.makedirs(root / "t")
  (root / "t" / "result.json").write_text(json.dumps(
      {"final": {"loss": 0.5}, "best_by": "loss", "step": 6, "wall_time_s": 1.0}))
  manifest = {"config": f"{evil}:smoke=True", "sweep": "sweep",
              "trials": {"t": {"status": "done", "overrides": {"attention": "luong"}}}}
  if recorded is not None:
    manifest["experiment"] = recorded
  (root / "sweep.json").write_text(json.dumps(manifest))
  return root, marker


def test_report_never_imports_the_file_sweep_json_names(tmp_path):
  recorded = {"references": [dict(source="Paper", where="Table 1", metric="loss", value=0.4)]}
  root, marker = _doctored_root(tmp_path, recorded)
  done = report.report(str(root))
  assert not marker.exists()
  assert "| Paper | Table 1 | loss | 0.4 | 0.5000 |  |" in done["markdown"]
  assert "Evil" not in done["markdown"]


def test_report_refuses_references_edited_into_a_bad_shape(tmp_path):
  root, marker = _doctored_root(tmp_path, {"references": [{"source": "Paper"}]})
  proc = subprocess.run([sys.executable, "-m", "launch.report", f"--root={root}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2 and not marker.exists()
  assert proc.stderr.strip() == ("error: sweep.json: experiment.references is not a list of "
                                 "records with source, metric and value")


def test_report_of_an_old_root_names_how_to_record_references(tmp_path):
  root, marker = _doctored_root(tmp_path, None)  # a sweep from before the record
  proc = subprocess.run([sys.executable, "-m", "launch.report", f"--root={root}"], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  assert not marker.exists()
  assert report.UNRECORDED in proc.stdout and "Evil" not in proc.stdout


def test_keep_is_refused_for_a_search(tmp_path, capsys):
  code = sweep_lib.main([f"--config={SPEC}", f"--root={tmp_path / 'r'}", "--search=optuna",
                         "--trials=2", f"--keep={tmp_path / 'k'}"])
  assert code == 2 and "--keep is for grid sweeps" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "r") and not os.path.exists(tmp_path / "k")
