"""Damaged files on resume, a full disk and Ctrl-C: one line naming the path, the right exit
code, the newest intact checkpoint used, and nothing that could be evidence overwritten."""
import errno
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from attention_jax import tasks
from attention_jax.models.registry import build_model
from attention_jax.train import checkpoint, history as history_lib, metrics as metrics_lib
from attention_jax.train import optim, partition, setup

# One xdist worker runs the whole module: its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("test_resume_faults")

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG = os.path.join(ROOT, "experiments", "g2p_attention.py") + ":smoke=True"
COPY = ["--config.data.name=algorithmic/copy", "--config.evals.dev.examples=16",
        "--config.evals.dev.metrics=sequence_accuracy,token_error_rate"]
FLAGS = [*COPY, "--config.train.steps=8", "--config.train.checkpoint_every=2",
         "--config.evals.dev.every=4", "--config.model.dropout_rate=0.1",
         "--config.evals.dev.heatmaps=0"]  # drawing is tested in test_main
ENOSPC = ("RESOURCE_EXHAUSTED: Error writing local file \"x\": Failed to write 10 bytes: "
          "No space left on device [os_error_code='28']")


def _state():
  """A tiny Transformer's train state (as in test_checkpoint.py)."""
  model = build_model(dict(name="transformer", vocab_size=12, d_model=16, num_heads=2, d_ff=32,
                           num_layers=1, max_len=8))
  tx, _ = optim.make_optimizer(dict(name="adamw", learning_rate=1e-2, warmup_steps=0,
                                    schedule="constant", b1=0.9, b2=0.98, weight_decay=0.0,
                                    grad_clip_norm=1.0), 10)
  mesh = partition.make_mesh((-1, 1))
  return setup.create_state(tasks.Seq2SeqTask(model, None), tx, jax.random.key(0), 2, mesh)[0]


def _command(workdir, *flags):
  return [sys.executable, "-m", "attention_jax.main", f"--config={CONFIG}",
          f"--workdir={workdir}", *flags]


def _env(data_dir):
  return dict(os.environ, ATTENTION_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")


def _run(data_dir, workdir, *flags):
  return subprocess.run(_command(workdir, *(flags or FLAGS)), capture_output=True, text=True,
                        cwd=ROOT, env=_env(data_dir), timeout=600)


def _params(workdir):
  step = max(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  return step, ocp.StandardCheckpointer().restore(path)["params"]


def _assert_same_params(a, b):
  (step_a, pa), (step_b, pb) = _params(a), _params(b)
  assert step_a == step_b == 8
  for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
    np.testing.assert_array_equal(x, y)


def _errors(stderr):
  """The lines a user reads: warnings and errors (not absl's or the data builder's)."""
  return [line for line in stderr.splitlines() if line.startswith(("warning:", "error:"))]


def _snapshot(directory):
  """{relative path: bytes} of every file under `directory` (but the run's lock file)."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in set(files) - {".lock"}:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, directory)] = f.read()
  return out


@pytest.fixture(scope="module")
def data_dir(shared_data_dir):
  return shared_data_dir


@pytest.fixture(scope="module")
def straight(data_dir, tmp_path_factory):
  """An uninterrupted 8-step run: checkpoints 4, 6, 8 and result.json."""
  workdir = tmp_path_factory.mktemp("straight") / "run"
  proc = _run(data_dir, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _killed_after_6(straight, tmp_path):
  """A copy of `straight` as a run killed after saving step 6 would leave it."""
  workdir = tmp_path / "run"
  shutil.copytree(straight, workdir)
  os.remove(workdir / "result.json")
  shutil.rmtree(workdir / "checkpoints" / "8")
  return workdir


def _garbage_arrays(step_dir):
  for root, _, files in os.walk(step_dir / "state"):
    if os.path.basename(root) == "d":
      for name in files:
        path = os.path.join(root, name)
        with open(path, "r+b") as f:
          f.write(os.urandom(os.path.getsize(path)))


def _truncated_metadata(step_dir):
  path = step_dir / "state" / "_METADATA"
  path.write_bytes(path.read_bytes()[:100])


def _corrupt_data_state(step_dir):
  (step_dir / "data" / "metadata").write_text('{"next_ind')


# --- damaged checkpoints ------------------------------------------------------------------


@pytest.mark.parametrize("damage", [_garbage_arrays, _truncated_metadata, _corrupt_data_state],
                         ids=["garbage_arrays", "truncated_METADATA", "data_state"])
def test_damaged_latest_checkpoint_falls_back_to_the_intact_one(damage, straight, data_dir,
                                                                tmp_path):
  workdir = _killed_after_6(straight, tmp_path)
  damage(workdir / "checkpoints" / "6")
  damaged = _snapshot(workdir / "checkpoints" / "6")
  proc = _run(data_dir, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  warnings = _errors(proc.stderr)
  assert warnings[0].startswith(f"warning: checkpoint {workdir}/checkpoints/6 (")
  assert warnings[0].endswith(") is damaged") and len(warnings) == 2, warnings
  assert "resuming from step 4" in warnings[1]
  assert f"resumed from {workdir}/checkpoints at step 4" in proc.stdout
  # The damaged files are kept aside as evidence; step 6 was saved again by the rerun.
  assert _snapshot(workdir / "checkpoints" / "6.damaged") == damaged
  _assert_same_params(straight, workdir)
  result = json.loads((workdir / "result.json").read_text())
  assert result["best_step"] == json.loads((straight / "result.json").read_text())["best_step"]


def test_every_checkpoint_damaged_refuses_and_changes_nothing(straight, data_dir, tmp_path):
  workdir = _killed_after_6(straight, tmp_path)
  _truncated_metadata(workdir / "checkpoints" / "6")
  _corrupt_data_state(workdir / "checkpoints" / "4")
  before = _snapshot(workdir)
  proc = _run(data_dir, workdir)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  lines = _errors(proc.stderr)
  assert lines[-1].startswith(f"error: every checkpoint in {workdir}/checkpoints is damaged "
                              "(steps 6, 4; the newest: ")
  assert lines[-1].endswith(f"move {workdir}/checkpoints aside to start from step 0")
  assert len(lines) == 3  # a warning per checkpoint, then the error
  after = _snapshot(workdir)
  assert after == before  # nothing restarted from step 0 over them


def test_restore_falls_back_in_process_and_resaves_the_damaged_step(tmp_path, capsys):
  state = _state()
  ckpt = checkpoint.Checkpoints(str(tmp_path), every=1, keep=3)
  for step in (1, 2, 3):
    ckpt.save(step, state, {"position": step})
  ckpt.close()
  _truncated_metadata(tmp_path / "checkpoints" / "3")
  ckpt = checkpoint.Checkpoints(str(tmp_path), every=1, keep=3)
  restored, data_state, step = ckpt.restore(_state())
  assert step == 2 and data_state == {"position": 2} and ckpt.good == 2
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    np.testing.assert_array_equal(a, b)
  assert (tmp_path / "checkpoints" / "3.damaged" / "state" / "_METADATA").exists()
  assert f"checkpoint {tmp_path}/checkpoints/3 (" in capsys.readouterr().err
  assert ckpt.save(3, state, {"position": 3})  # not skipped as "already there"
  ckpt.close()
  assert checkpoint.Checkpoints(str(tmp_path), every=1).restore(_state())[2] == 3


def test_another_state_structure_is_not_damage(tmp_path):
  """A checkpoint saved with a moving average, restored into a state without one: one line
  that says so, and the checkpoints stay where they are (none is taken for damaged)."""
  state = _state()
  ema_tx, _ = optim.make_optimizer(dict(name="adamw", learning_rate=1e-2, warmup_steps=0,
                                        schedule="constant", b1=0.9, b2=0.98, weight_decay=0.0,
                                        grad_clip_norm=1.0, ema_decay=0.9), 10)
  ckpt = checkpoint.Checkpoints(str(tmp_path), every=1, keep=3)
  for step in (1, 2):
    ckpt.save(step, state.replace(opt_state=ema_tx.init(state.params)), {"position": step})
  ckpt.close()
  before = _snapshot(str(tmp_path))
  with pytest.raises(checkpoint.StructureError) as e:
    checkpoint.Checkpoints(str(tmp_path), every=1, keep=3).restore(state)
  assert str(e.value).startswith(f"checkpoint {tmp_path}/checkpoints/2 holds another state "
                                 "structure than this config builds")
  assert "\n" not in str(e.value) and _snapshot(str(tmp_path)) == before


def test_damaged_best_checkpoint_is_one_line(tmp_path):
  best = checkpoint.Checkpoints(str(tmp_path), every=0, keep=1, name="best")
  best.save(4, _state(), {"position": 4}, force=True)
  best.close()
  _garbage_arrays(tmp_path / "best" / "4")
  with pytest.raises(checkpoint.DamagedError) as e:
    checkpoint.Checkpoints(str(tmp_path), every=0, keep=1, name="best").restore(_state())
  assert str(e.value).startswith(f"every checkpoint in {tmp_path}/best is damaged (steps 4; ")
  assert "\n" not in str(e.value) and (tmp_path / "best" / "4").exists()


# --- metrics.jsonl ------------------------------------------------------------------------


def test_torn_last_metrics_line_is_dropped_and_the_run_matches(straight, data_dir, tmp_path):
  workdir = _killed_after_6(straight, tmp_path)
  metrics = workdir / "metrics.jsonl"
  intact = metrics.read_text()
  metrics.write_text(intact + '{"step": 7, "split": "tr')  # a write cut short by a kill
  proc = _run(data_dir, workdir)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = intact.count("\n") + 1
  assert _errors(proc.stderr) == [
      f"warning: {metrics}:{lines}: dropped a torn last line (not JSON: "
      "b'{\"step\": 7, \"split\": \"tr')"]
  text = metrics.read_text()
  assert text.startswith(intact)  # the fragment is cut, the next record on its own line
  assert all(json.loads(line) for line in text.splitlines())
  _assert_same_params(straight, workdir)
  result = json.loads((workdir / "result.json").read_text())
  assert result["best_step"] == json.loads((straight / "result.json").read_text())["best_step"]


def test_damaged_middle_metrics_line_refuses(straight, data_dir, tmp_path):
  workdir = _killed_after_6(straight, tmp_path)
  metrics = workdir / "metrics.jsonl"
  rows = metrics.read_text().splitlines(keepends=True)
  rows[1] = "\x00\x00garbage\n"
  metrics.write_text("".join(rows))
  before = _snapshot(workdir)
  proc = _run(data_dir, workdir)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert "Traceback" not in proc.stderr
  assert _errors(proc.stderr)[-1].startswith(f"error: {metrics}:2: damaged record (not JSON")
  assert _snapshot(workdir) == before


def test_missing_metrics_on_resume_refuses(straight, data_dir, tmp_path):
  workdir = _killed_after_6(straight, tmp_path)
  os.remove(workdir / "metrics.jsonl")
  proc = _run(data_dir, workdir)
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert _errors(proc.stderr) == [
      f"error: {workdir}/metrics.jsonl is missing but the checkpoints resume at step 6: the "
      "best step and early stopping depend on it; restore it, or move the workdir aside to "
      "start over"]
  assert not (workdir / "metrics.jsonl").exists() and not (workdir / "checkpoints" / "8").exists()


def test_history_drops_a_torn_tail_and_refuses_a_torn_middle(tmp_path, capsys):
  path = tmp_path / "metrics.jsonl"
  good = ('{"step": 2, "split": "dev", "wer": 0.5}\n'
          '{"step": 2, "split": "train", "elapsed_s": 3.0}\n')
  path.write_text(good + '{"step": 4, "spl')
  # A train record without cpu_s (written before it was logged): the CPU total is unknown.
  assert history_lib.history(str(tmp_path), 4, "dev") == ([(2, {"wer": 0.5})], (3.0, None))
  assert f"{path}:3: dropped a torn last line" in capsys.readouterr().err
  assert path.read_text() == good
  path.write_text(good.rstrip("\n"))  # a whole record without its newline: kept, newline added
  assert history_lib.history(str(tmp_path), 0, "dev") == ([], (0.0, 0.0))
  assert path.read_text() == good
  path.write_text('{"step": 2}\n' + good)
  with pytest.raises(history_lib.HistoryError, match=r"metrics.jsonl:1: damaged record"):
    history_lib.history(str(tmp_path), 4, "dev")


# --- Ctrl-C -------------------------------------------------------------------------------


def _children_cpu_s() -> float:
  """CPU seconds of this process' waited-for children (user + system)."""
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def _interrupted_after_step_2(sig, data_dir, workdir, wait_for):
  """Runs the trainer until step 2's checkpoint is committed, then sends `sig`:
  (exit code, stdout, stderr)."""
  proc = subprocess.Popen(_command(workdir, *FLAGS), cwd=ROOT, env=_env(data_dir),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  wait_for(workdir / "checkpoints" / "2" / "commit_success.txt", proc)
  proc.send_signal(sig)
  out, err = proc.communicate(timeout=300)
  return proc.returncode, out, err


def test_sigint_saves_exits_130_and_resumes_to_the_same_parameters(straight, data_dir, tmp_path,
                                                                   wait_for):
  workdir = tmp_path / "run"
  code, _, err = _interrupted_after_step_2(signal.SIGINT, data_dir, workdir, wait_for)
  assert code == 130, err[-3000:]
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  assert _errors(err) == []  # said like SIGTERM's line, not as an error
  assert err.splitlines()[-1] == (f"SIGINT: saved step {_params(workdir)[0]} to "
                                  f"{workdir}/checkpoints; rerun to resume")
  assert not (workdir / "result.json").exists()
  resumed = _run(data_dir, workdir)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  _assert_same_params(straight, workdir)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_or_stopped_run_resumes_to_the_same_parameters_and_time(sig, straight, data_dir,
                                                                       tmp_path, wait_for):
  workdir = tmp_path / "run"
  code, out, _ = _interrupted_after_step_2(sig, data_dir, workdir, wait_for)
  if sig == signal.SIGTERM:
    assert code == 0 and "SIGTERM: saved step" in out
  assert not (workdir / "result.json").exists()
  # The first attempt's times, moved 1000 s later: the resumed run's total must carry them over.
  metrics = workdir / "metrics.jsonl"
  rows = [json.loads(line) for line in metrics.read_text().splitlines()]
  for row in rows:
    if "elapsed_s" in row:
      row["elapsed_s"] += 1000.0
      row["cpu_s"] += 1000.0
  metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
  started = time.perf_counter(), _children_cpu_s()
  resumed = _run(data_dir, workdir)
  seconds, cpu = time.perf_counter() - started[0], _children_cpu_s() - started[1]
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  assert "resumed from" in resumed.stdout
  step = int(re.search(r"resumed from \S+ at step (\d+)", resumed.stdout).group(1))
  train = [r for r in rows if r["split"] == "train" and r["step"] <= step]
  before = max(r["elapsed_s"] for r in train)
  result = json.loads((workdir / "result.json").read_text())
  assert 1000.0 < before < result["wall_time_s"] < before + seconds
  # CPU: all of the resumed process' threads, as the OS counted them for its parent here.
  before = max(r["cpu_s"] for r in train)
  assert 1000.0 < before < result["cpu_time_s"] <= before + cpu
  _assert_same_params(straight, workdir)


# --- a full disk --------------------------------------------------------------------------


def _mount_tmpfs(path, size):
  """Mounts a tmpfs of `size` at `path`; skips the test where that is not permitted."""
  os.makedirs(path, exist_ok=True)
  if os.geteuid() != 0 or shutil.which("mount") is None:
    pytest.skip("a small file system needs root and mount(8) to create")
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True, text=True)
  if proc.returncode:
    pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")


def test_full_disk_during_a_save_is_one_line_and_keeps_the_last_good_step(data_dir, tmp_path):
  workdir = tmp_path / "run"
  mount = workdir / "checkpoints"
  flags = [*COPY, "--config.train.steps=8", "--config.train.checkpoint_every=1",
           "--config.train.keep_checkpoints=8", "--config.evals.dev.every=8"]
  _mount_tmpfs(mount, "1000k")  # room for a few checkpoints of 200-400 KB, not eight
  try:
    proc = _run(data_dir, workdir, *flags)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Exception" not in proc.stderr
    (line,) = _errors(proc.stderr)
    found = re.fullmatch(rf"error: no space left on device while writing {mount}/(\d+); the "
                         rf"last good checkpoint is step (\d+) in {mount}", line)
    assert found, line
    failed, good = int(found.group(1)), int(found.group(2))
    assert 1 < failed == good + 1  # stopped at the save that failed, not saves later
    # Only intact checkpoints are left (the partial one is removed to free its space).
    assert sorted(os.listdir(mount), key=int) == [str(s) for s in range(1, failed)]
    assert ocp.StandardCheckpointer().restore(str(mount / str(good) / "state"))["params"]
    # With room again, a rerun resumes from the last good step.
    subprocess.run(["mount", "-o", "remount,size=20m", str(mount)], check=True)
    resumed = _run(data_dir, workdir, *flags)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {workdir}/checkpoints at step {good}" in resumed.stdout
  finally:
    subprocess.run(["umount", str(mount)], check=False)


def test_failed_background_save_is_reported_once_naming_the_step(tmp_path, monkeypatch):
  ckpt = checkpoint.Checkpoints(str(tmp_path), every=1, keep=3)
  state = _state()
  assert ckpt.save(1, state, {"position": 1})
  ckpt.wait()
  assert ckpt.save(2, state, {"position": 2})
  real_wait = ckpt.manager.wait_until_finished

  def full_disk():
    real_wait()
    raise ValueError(ENOSPC)

  monkeypatch.setattr(ckpt.manager, "wait_until_finished", full_disk)
  deadline = time.monotonic() + 60
  with pytest.raises(checkpoint.WriteError) as e:
    while time.monotonic() < deadline:  # poll() raises once the background write ends
      ckpt.poll()
  assert str(e.value) == (f"no space left on device while writing {tmp_path}/checkpoints/2; "
                          f"the last good checkpoint is step 1 in {tmp_path}/checkpoints")
  ckpt.close()  # reported already: no second error


def test_metric_writer_names_the_file_on_a_full_disk(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path))
  writer.write(1, "train", {"loss": 1.0})

  class Full:
    def write(self, text):
      raise OSError(errno.ENOSPC, "No space left on device")

    def close(self):
      pass

  writer._jsonl = Full()
  with pytest.raises(OSError) as e:
    writer.write(2, "train", {"loss": 1.0})
  assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "metrics.jsonl")
  # tensorboardX cannot flush either: close raises once, and its exit hook stays quiet.
  for file_writer in writer._tb.all_writers.values():
    records = file_writer.event_writer._ev_writer._py_recordio_writer
    records._writer = _FullFile()  # the real file is closed when collected
  event_writers = [w.event_writer for w in writer._tb.all_writers.values()]
  with pytest.raises(OSError) as e:
    writer.close()
  assert e.value.filename == str(tmp_path / "tensorboard")
  for event_writer in event_writers:
    event_writer.close()  # what tensorboardX's atexit hook calls: must not raise


class _FullFile:
  """A file on a full disk: writes are buffered, flushes fail."""

  def write(self, data):
    return len(data)

  def flush(self):
    raise OSError(errno.ENOSPC, "No space left on device")

  def close(self):
    self.flush()




def test_a_workdir_of_another_config_is_refused_but_one_from_before_a_new_key_resumes(tmp_path):
  from attention_jax import experiment  # pylint: disable=import-outside-toplevel
  config = experiment.base_config().to_dict()
  workdir = str(tmp_path / "run")
  old = json.loads(json.dumps(config))
  del old["optim"]["ema_decay"]  # written before the key existed
  history_lib.prepare_workdir(workdir, json.dumps(old), write=True, provenance={"git": 1})
  history_lib.prepare_workdir(workdir, json.dumps(config), write=True)  # resumes
  before = open(os.path.join(workdir, "config.json")).read()
  for section, key, value in (("optim", "ema_decay", 0.999), ("optim", "learning_rate", 1.0)):
    other = json.loads(json.dumps(config))
    other[section][key] = value
    with pytest.raises(history_lib.WorkdirError, match="holds a run of another config"):
      history_lib.prepare_workdir(workdir, json.dumps(other), write=True)
  assert open(os.path.join(workdir, "config.json")).read() == before
