"""The command line end to end: smoke configs, bad input, NaN (exact resume after kills and
SIGTERM: test_resume_faults)."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from attention_jax import experiment
from attention_jax.data import DataError
from attention_jax.train import loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))
G2P = os.path.join(ROOT, "experiments", "g2p_attention.py")
COPY = ["--config.data.name=algorithmic/copy", "--config.evals.dev.examples=16",
        "--config.evals.dev.metrics=sequence_accuracy,token_error_rate"]


@pytest.fixture(scope="module")
def data_dir(shared_data_dir):
  return shared_data_dir


def _command(config, workdir, *flags):
  return [sys.executable, "-m", "attention_jax.main", f"--config={config}",
          f"--workdir={workdir}", *flags]


def _env(data_dir):
  return dict(os.environ, ATTENTION_JAX_DATA_DIR=data_dir, JAX_PLATFORMS="cpu")


def _run(data_dir, *args, **kwargs):
  return subprocess.run(_command(*args), capture_output=True, text=True, cwd=ROOT,
                        env=_env(data_dir), timeout=600, **kwargs)


@pytest.mark.parametrize("config", EXPERIMENTS, ids=os.path.basename)
def test_smoke_config_trains_evaluates_and_draws(config, data_dir, tmp_path, request):
  smoke = experiment.load(config).get_config("smoke=True")
  manual_dir, flags = smoke.data.manual_dir, []
  if manual_dir and not os.path.isdir(manual_dir):  # FreeDict: a system package, not pip's
    pytest.skip(f"{os.path.basename(config)} reads {manual_dir}, not on this machine")
  if smoke.data.name.startswith("spoken_digits"):  # recordings written here, not FSDD's
    flags = [f"--config.data.manual_dir={request.getfixturevalue('spoken_digit_recordings')}"]
  workdir = tmp_path / "run"
  proc = _run(data_dir, f"{config}:smoke=True", workdir, "--config.train.steps=2",
              "--config.evals.dev.every=2", *flags)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"results: {workdir}/result.json" in proc.stdout
  result = json.loads((workdir / "result.json").read_text())
  assert result["step"] == 2 and np.isfinite(result["final"]["loss"])
  pngs = sorted((workdir / "attention" / "step_2").glob("*.png"))
  assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert {"l2_grads", "l2_params", "learning_rate", "steps_per_s", "tokens_per_s"} <= set(rows[0])
  assert glob.glob(str(workdir / "tensorboard" / "events.out.tfevents.*"))


@pytest.mark.parametrize("flag,message", [
    ("--config.model.attention=bogus", "RNNSeq2Seq.attention='bogus' is unknown"),
    ("--config.data.name=nosuch", "data.name='nosuch'"),
])
def test_bad_config_exits_2_before_writing(flag, message, data_dir, tmp_path):
  workdir = tmp_path / "run"
  proc = _run(data_dir, f"{G2P}:smoke=True", workdir, flag)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert message in proc.stderr
  assert not workdir.exists()


# In the trainer's process: main() turns exactly these two errors into one line and exit 2
# (the subprocess cases above); each of these costs an interpreter start otherwise.
@pytest.mark.parametrize("key,value,message", [
    ("data.tokenizer", "words", "data.tokenizer='words' is unknown"),
    ("train.mesh_shape", (3, 1), "mesh_shape (3, 1) needs 3 devices"),
    ("data.eval_batch_size", 0, "data.eval_batch_size=0 is not a positive multiple"),
    ("evals.dev.decode", "nucleus", "evals.dev.decode='nucleus' is unknown"),
    ("train.select_by", "werr", "train.select_by='werr' is not a metric"),
    ("train.select_eval", "test", "train.select_eval='test' is not a periodic evaluator"),
    ("train.steps", -5, "train.steps=-5 is out of range; allowed: a number in [1, inf)"),
    ("train.keep_checkpoints", 0, "train.keep_checkpoints=0 is out of range"),
    ("optim.learning_rate", -0.01, "optim.learning_rate=-0.01 is out of range"),
    ("optim.learning_rate", float("nan"), "optim.learning_rate=nan is out of range"),
    ("model.dropout_rate", 1.5, "model.dropout_rate=1.5 is out of range; allowed: a "
     "number in [0, 1)"),
])
def test_bad_config_is_refused_before_writing(key, value, message, data_dir, tmp_path,
                                              monkeypatch):
  monkeypatch.setenv("ATTENTION_JAX_DATA_DIR", data_dir)
  config = experiment.config_from_spec(f"{G2P}:smoke=True")
  *parents, leaf = key.split(".")
  node = config
  for name in parents:
    node = node[name]
  node[leaf] = value
  workdir = tmp_path / "run"
  with pytest.raises((loop.ConfigError, DataError)) as raised:
    loop.train_and_evaluate(config, str(workdir))
  assert message in str(raised.value)
  assert not workdir.exists()


def test_unwritable_workdir_is_an_error(data_dir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("not a directory")
  proc = _run(data_dir, f"{G2P}:smoke=True", blocker / "run")
  assert proc.returncode == 2 and "is not writable" in proc.stderr, proc.stderr[-2000:]
  assert blocker.read_text() == "not a directory"


@pytest.mark.parametrize("config,flag,message", [
    (f"{G2P}:smoke=True", "--config.train.stepz=3",
     "error: --config.train.stepz: no such config key; did you mean --config.train.steps?"),
    (f"{G2P}:smok=True", "--config.seed=1", f"error: --config={G2P}:smok=True: unknown config "
     "argument 'smok'; did you mean 'smoke'? known: attention, score, cell, stress, standard, "
     "steps, test, beam, smoke, layers, estimator, credit, xu, distilled"),
    ("experiments/nosuch.py", "--config.seed=1", "error: no experiment file at "
     "'experiments/nosuch.py'"),
    (f"{G2P}:smoke=True", "--config.train.steps=abc", "error: flag --config.train.steps=abc: "
     "invalid literal for int() with base 10: 'abc'"),
], ids=["misspelt override", "misspelt argument", "missing file", "bad value"])
def test_command_line_mistakes_are_one_line_and_exit_2(config, flag, message, data_dir,
                                                       tmp_path):
  proc = _run(data_dir, config, tmp_path / "run", flag)
  assert (proc.returncode, proc.stderr) == (2, message + "\n")
  assert not (tmp_path / "run").exists()


def test_syntax_error_in_an_experiment_file_names_file_and_line(data_dir, tmp_path):
  path = tmp_path / "broken.py"
  path.write_text("def get_config(arg=None):\n  return dict(\n")
  proc = _run(data_dir, str(path), tmp_path / "run")
  assert (proc.returncode, proc.stderr) == (
      2, f"error: {path}:2: syntax error: '(' was never closed\n")
  assert not (tmp_path / "run").exists()


def test_non_finite_loss_stops_and_keeps_good_checkpoints(data_dir, tmp_path):
  workdir = tmp_path / "run"
  proc = _run(data_dir, f"{G2P}:smoke=True", workdir, *COPY,
              "--config.optim.learning_rate=1e30", "--config.train.checkpoint_every=1")
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert "non-finite" in proc.stderr and "between steps" in proc.stderr
  for path in glob.glob(str(workdir / "checkpoints" / "*")):
    params = ocp.StandardCheckpointer().restore(os.path.join(path, "state"))["params"]
    assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(params))


@pytest.mark.parametrize("attention,score,dtype", [
    ("none", "dot", "float32"), ("bahdanau", "additive", "bfloat16"),
    ("local", "general", "float32"), ("hard", "location", "float32")])
def test_every_attention_kind_trains_from_its_config(attention, score, dtype, data_dir,
                                                     tmp_path, monkeypatch):
  """One step and one small evaluation of each RNN attention kind (luong is the default
  above), one of them in mixed precision."""
  monkeypatch.setenv("ATTENTION_JAX_DATA_DIR", data_dir)
  config = experiment.load(G2P).get_config(f"smoke=True,attention={attention},score={score}")
  config.model.dtype = dtype
  config.train.steps = 1
  config.evals.dev.update(every=1, heatmaps=1, examples=4)
  config.data.eval_batch_size = 8
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))  # in-process: cheaper
  assert result["step"] == 1 and np.isfinite(result["final"]["loss"])
  if attention == "none":
    assert result["heatmaps"] is None  # no attention, nothing to draw
  else:
    assert os.listdir(result["heatmaps"]) == ["example_0_alignment.png"]


def test_ctrl_c_while_building_data_is_one_line_and_the_rerun_builds_again(tmp_path):
  """SIGINT before training (here: while the data set is built) exits 130 with one line,
  no traceback and no workdir; the rerun removes the interrupted build and trains."""
  data_dir, workdir = tmp_path / "data", tmp_path / "run"
  proc = subprocess.Popen(_command(f"{G2P}:smoke", workdir, *COPY), cwd=ROOT,
                          env=_env(str(data_dir)), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.monotonic() + 300
  while not glob.glob(str(data_dir / "algorithmic" / "copy" / "incomplete.*")):
    assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 130 and "Traceback" not in err, err[-3000:]
  assert err.strip().splitlines()[-1] == ("interrupted; rerun the command to resume from the "
                                          "last checkpoint")
  assert not workdir.exists()
  rerun = _run(str(data_dir), f"{G2P}:smoke", workdir, *COPY)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "left by an interrupted build" in rerun.stderr
  assert not glob.glob(str(data_dir / "algorithmic" / "copy" / "incomplete.*"))
