"""A real local sweep of tiny trials: a failure is isolated, reruns skip and resume, the report
holds the trials' own numbers."""
import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from launch import report

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SPEC = "tests/launch/sweep_experiment.py"


@pytest.fixture(scope="module")
def data_dir(shared_data_dir):
  return shared_data_dir


def _sweep(data_dir, *args, **popen):
  env = dict(os.environ, ATTENTION_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)
  command = [sys.executable, "-m", "launch.sweep", f"--config={SPEC}", *args]
  if popen:
    return subprocess.Popen(command, cwd=ROOT, env=env, text=True, **popen)
  return subprocess.run(command, cwd=ROOT, env=env, text=True, capture_output=True, timeout=600)


def _files(trial_dir):
  """Every file under a trial directory but its log: path -> (size, mtime)."""
  out = {}
  for dirpath, _, names in os.walk(trial_dir):
    for name in names:
      path = os.path.join(dirpath, name)
      if name != "log.txt":
        out[path] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
  return out


def test_sweep_isolates_failure_reruns_skip_and_report_matches(data_dir, tmp_path):
  root, kept = tmp_path / "sweep", tmp_path / "kept"
  first = _sweep(data_dir, f"--root={root}", "--max-parallel=2", f"--keep={kept}")
  assert first.returncode == 1, first.stdout + first.stderr  # one trial failed
  manifest = json.loads((root / "sweep.json").read_text())
  status = {name: t["status"] for name, t in manifest["trials"].items()}
  assert status == {"attention=none": "done", "attention=luong,score=dot": "done",
                    "attention=luong,score=general": "done", "attention=bogus": "failed"}
  failed = manifest["trials"]["attention=bogus"]
  assert failed["exit_code"] == 2
  assert any("attention='bogus' is unknown" in line for line in failed["log_tail"])
  assert "FAIL  attention=bogus: exit 2" in first.stdout
  assert first.stdout.count("start ") == 4 and "[3 done / 0 running / 1 failed / 0 left]" in (
      first.stdout)
  for name in ("attention=none", "attention=luong,score=dot"):
    assert json.loads((root / name / "result.json").read_text())["step"] == 6
    assert "step 6/6" in (root / name / "log.txt").read_text()

  finished = {n: _files(root / n) for n, s in status.items() if s == "done"}
  second = _sweep(data_dir, f"--root={root}", "--max-parallel=2")
  assert second.returncode == 1
  assert second.stdout.count("skip  ") == 3 and second.stdout.count("start ") == 1
  assert {n: _files(root / n) for n in finished} == finished  # nothing rewritten
  again = json.loads((root / "sweep.json").read_text())["trials"]["attention=bogus"]
  assert again["attempts"] == 2 and again["status"] == "failed"

  other = _sweep(data_dir, f"--root={root}", "--sweep=long")
  assert other.returncode == 2 and "holds the sweep" in other.stderr

  done = report.report(str(root))
  rows = list(csv.DictReader(open(os.path.join(done["dir"], "results.csv"))))
  assert [(r["attention"], r["score"]) for r in rows] == [
      ("none", "-"), ("luong", "dot"), ("luong", "general")]
  results = {n: json.loads((root / n / "result.json").read_text())["final"] for n in finished}
  by_name = {"attention=none": rows[0], "attention=luong,score=dot": rows[1],
             "attention=luong,score=general": rows[2]}
  for name, row in by_name.items():
    for metric, value in results[name].items():
      assert float(row[f"{metric}_mean"]) == pytest.approx(value, rel=1e-12)
      assert float(row[f"{metric}_std"]) == 0.0
  losses = [results[n]["loss"] for n in by_name]
  assert [int(r["best"]) for r in rows] == [int(i == np.argmin(losses)) for i in range(3)]
  assert "attention=bogus (failed, exit 2)" in done["markdown"]
  for path in done["figures"]:
    assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"

  # --keep: the finished trials' files, and a fresh root that starts from them (a new clone).
  assert sorted(os.listdir(kept)) == sorted(finished)
  for name in finished:
    for f in ("config.json", "metrics.jsonl", "result.json"):
      assert (kept / name / f).read_bytes() == (root / name / f).read_bytes()
  fresh = tmp_path / "fresh"
  again = _sweep(data_dir, f"--root={fresh}", f"--keep={kept}")
  assert again.returncode == 1  # the bogus trial still fails: it is the only one that ran
  assert again.stdout.count("kept  ") == 3 and again.stdout.count("start ") == 1
  assert not (fresh / "attention=none" / "checkpoints").exists()
  assert report.report(str(fresh))["markdown"] == done["markdown"]


def test_report_means_and_stds_over_seeds(tmp_path):
  """Two seeds of one configuration: the table holds their mean and population std."""
  root = tmp_path / "r"
  trials = {}
  for seed, (wer, loss) in enumerate([(0.30, 1.0), (0.20, 3.0)]):
    name = f"attention=luong,seed={seed}"
    os.makedirs(root / name)
    result = {"final": {"wer": wer, "loss": loss}, "best": {}, "best_by": "wer", "step": 10,
              "wall_time_s": 5.0, "cpu_time_s": 8.0 + 4 * seed, "seed": seed,
              "test": {"wer": wer / 2},
              "test_beam": {"wer": wer / 4}}
    (root / name / "result.json").write_text(json.dumps(result))
    (root / name / "metrics.jsonl").write_text(
        json.dumps({"step": 5, "split": "train", "loss": 2 * loss}) + "\n"
        + json.dumps({"step": 10, "split": "train", "loss": loss}) + "\n"
        + json.dumps({"step": 10, "split": "eval", "loss": loss, "wer": wer}) + "\n")
    trials[name] = {"status": "done", "overrides": {"attention": "luong", "seed": seed}}
  # The published numbers as the sweep recorded them when it started (the report never imports
  # the experiment file).
  recorded = {"references": [dict(source="Paper", where="Table 2", metric="wer", value=23.5)]}
  (root / "sweep.json").write_text(json.dumps({"config": "exp.py:smoke=True", "sweep": "sweep",
                                               "experiment": recorded, "trials": trials}))
  done = report.report(str(root))
  row = "| **best** | luong | 25.00 ± 5.00 | 2.0000 ± 1.0000 | 2 | 10 | 5 | 10 |"
  assert row in done["markdown"]
  assert "| Paper | Table 2 | wer (%) | 23.5 | 25.00 ± 5.00 |  |" in done["markdown"]
  test = report.report(str(root), which="test")
  assert "| **best** | luong | 12.50 ± 2.50 | 2 | 10 | 5 | 10 |" in test["markdown"]
  assert report.main([f"--root={root}", "--which=test_beam", f"--out={tmp_path / 'b'}"]) == 0
  beam = (tmp_path / "b" / "results.md").read_text()
  assert "| **best** | luong | 6.25 ± 1.25 | 2 | 10 | 5 | 10 |" in beam
  assert report.main([f"--root={root}", "--which=tset", f"--out={tmp_path / 'c'}"]) == 2
  assert not (tmp_path / "c").exists()
  # One configuration: no 'wer by attention' plot of a single point, only the learning curves.
  assert [os.path.basename(p) for p in test["figures"]] == ["learning_curves.png"]


def test_best_by_marks_the_row_chosen_on_dev_in_a_table_of_test(tmp_path):
  """Select on dev, report test: --best-by=dev marks the configuration best on dev (and
  its value stands beside the published one) though another is better on test."""
  root = tmp_path / "r"
  trials = {}
  for name, dev, test in (("a", 0.20, 0.26), ("b", 0.22, 0.24)):
    os.makedirs(root / name)
    (root / name / "result.json").write_text(json.dumps(
        {"final": {"wer": dev}, "dev": {"wer": dev}, "test": {"wer": test}, "best_by": "wer",
         "step": 10, "wall_time_s": 1.0}))
    trials[name] = {"status": "done", "overrides": {"attention": name}}
  recorded = {"references": [dict(source="Paper", where="Table 2", metric="wer", value=23.5)]}
  (root / "sweep.json").write_text(json.dumps({"config": "exp.py", "sweep": "s",
                                               "experiment": recorded, "trials": trials}))
  by_test = report.report(str(root), which="test")["markdown"]
  assert "| **best** | b | 24.00 |" in by_test and "| 23.5 | 24.00 |" in by_test
  chosen = report.report(str(root), which="test", best_by="dev")["markdown"]
  assert "marked: the row best by dev wer." in chosen
  assert "| **best** | a | 26.00 |" in chosen and "|  | b | 24.00 |" in chosen
  assert "| 23.5 | 26.00 |" in chosen
  assert (root / "report" / "results.csv").read_text().splitlines()[1:] == [
      "a,0.26,0.0,1,1", "b,0.24,0.0,1,0"]
  assert report.main([f"--root={root}", "--which=test", "--best-by=dve",
                      f"--out={tmp_path / 'x'}"]) == 2
  assert not (tmp_path / "x").exists()


def test_interrupted_trial_resumes_from_its_checkpoint(data_dir, tmp_path):
  root = tmp_path / "sweep"
  trial = root / "evals.dev.every=30,train.checkpoint_every=5,train.steps=60"
  os.makedirs(trial)
  # The trial's log is a pipe: reading it tells when training is under way, without sleeping.
  os.mkfifo(trial / "log.txt")
  sweep = _sweep(data_dir, f"--root={root}", "--sweep=long", stdout=subprocess.PIPE,
                 stderr=subprocess.STDOUT)
  with open(trial / "log.txt") as log:
    for line in log:
      if line.startswith("step 10/60"):
        sweep.send_signal(signal.SIGINT)  # Ctrl-C: the sweep passes SIGTERM to the trial
        break
    log.read()  # drain until the trial exits
  out = sweep.communicate(timeout=600)[0]
  assert sweep.returncode == 130, out
  assert "interrupted; rerun the sweep to resume it" in out
  manifest = json.loads((root / "sweep.json").read_text())
  assert manifest["trials"][trial.name]["status"] == "interrupted"
  assert not (trial / "result.json").exists()
  os.remove(trial / "log.txt")

  rerun = _sweep(data_dir, f"--root={root}", "--sweep=long")
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  assert f"resume {trial.name}" in rerun.stdout
  log = (trial / "log.txt").read_text()
  resumed_at = int(log.split("checkpoints at step ")[1].split()[0])
  assert 10 <= resumed_at < 60
  assert json.loads((trial / "result.json").read_text())["step"] == 60


def test_plots_name_configurations_by_what_differs_and_skip_single_points(tmp_path):
  """A wide row beside the defaults: the legend names the width, not the shared overrides, and
  no 'wer by hidden_dim' plot of one point (the defaults row has no hidden_dim to place)."""
  root = tmp_path / "r"
  trials = {}
  for index, extra in enumerate([{"model.hidden_dim": 256}, {}]):
    overrides = {"attention": "luong", "steps": 40000, **extra}
    name = f"trial{index}"
    os.makedirs(root / name)
    (root / name / "result.json").write_text(json.dumps(
        {"final": {"wer": 0.3 - 0.1 * index}, "best_by": "wer", "step": 10, "wall_time_s": 1.0}))
    (root / name / "metrics.jsonl").write_text(
        json.dumps({"step": 10, "split": "train", "loss": 1.0}) + "\n")
    trials[name] = {"index": index, "status": "done", "overrides": overrides}
  (root / "sweep.json").write_text(json.dumps({"config": "gone.py", "sweep": "s", "trials": trials}))
  (root / "report").mkdir()
  (root / "report" / "learning_curves.png").write_bytes(b"an earlier report's")
  # One point per trial (as an ensemble has): no curve to draw, and no stale figure left.
  assert report.report(str(root))["figures"] == []
  assert not (root / "report" / "learning_curves.png").exists()
  with open(root / "trial0" / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 20, "split": "train", "loss": 0.5}) + "\n")
  done = report.report(str(root))
  assert [os.path.basename(p) for p in done["figures"]] == ["learning_curves.png"]
  assert (root / "report" / "learning_curves.png").read_bytes().startswith(b"\x89PNG")
  _, rows = report.collect(str(root))
  keys = report.varied_keys(rows)
  assert keys == ["attention", "steps", "model.hidden_dim"]
  varying = report.differing(report.group(rows, keys), keys)
  assert varying == ["model.hidden_dim"]
  assert [report.plot_label(t["overrides"], varying) for t in trials.values()] == [
      "model.hidden_dim=256", "defaults"]


def test_report_warns_when_rows_come_from_different_setups(tmp_path, capsys):
  root = tmp_path / "r"
  trials = {}
  setups = [("0.10.2", "aa"), ("0.10.2", "aa"), ("0.10.1", "bb")]
  for i, (jax_version, data_hash) in enumerate(setups):
    name = f"score=s{i}"
    os.makedirs(root / name)
    provenance = {"versions": {"jax": jax_version}, "platform": "cpu", "device_kind": "cpu",
                  "data": {"name": "cmudict_g2p/stress", "records_sha256": data_hash}}
    (root / name / "result.json").write_text(json.dumps(
        {"final": {"wer": 0.3}, "best_by": "wer", "step": 10, "wall_time_s": 1.0,
         "provenance": provenance}))
    (root / name / "metrics.jsonl").write_text("")
    trials[name] = {"index": i, "status": "done", "overrides": {"score": f"s{i}"}}
  (root / "sweep.json").write_text(json.dumps({"config": "x.py", "sweep": "s", "trials": trials,
                                               "experiment": {"references": []}}))
  assert report.main([f"--root={root}"]) == 0
  expected = ["rows differ in jax version: 0.10.2 (score=s0, score=s1); 0.10.1 (score=s2)",
              "rows differ in data hash: aa (score=s0, score=s1); bb (score=s2)"]
  assert capsys.readouterr().err.splitlines() == [f"warning: {w}" for w in expected]
  text = (root / "report" / "results.md").read_text()
  assert text.endswith("Warning: these rows come from different setups.\n\n"
                       + "".join(f"- {w}\n" for w in expected))
