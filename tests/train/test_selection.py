"""Best-step selection, early stopping on the dev metric, and the test split scored with the
best step's parameters; evaluation and decoding with the parameters' moving average."""
import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from attention_jax import data, experiment, predict, tasks
from attention_jax.evaluate import metrics
from attention_jax.train import history as history_lib, loop, optim, partition, setup, validate
from launch import ensemble

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "launch", "sweep_experiment.py")


def _config(test=False, **train):
  config = experiment.load(TINY).get_config("steps=20")
  config.evals.dev.update(every=2, heatmaps=0)
  if test:
    config.evals.test = experiment.test_evaluator(config.evals.dev)
  config.train.update(**train)
  return config


def test_selection_metric_and_direction():
  config = _config()
  task = lambda: tasks.build_task(config, None, vocab_size=16)
  for scorers, want in (("sequence_accuracy,g2p", "wer"), ("bleu", "bleu"),
                        ("sequence_accuracy", "loss")):
    config.evals.dev.metrics = scorers
    assert validate.selection_metric(config, task()) == want
  assert metrics.better("bleu", 21.0, 20.0) and not metrics.better("wer", 0.4, 0.3)
  assert metrics.better("bits_per_char", 1.9, 2.0) and metrics.better("sequence_accuracy", 0.5, 0.4)
  history = [(2, {"wer": 0.5}), (4, {"wer": 0.3}), (6, {"wer": 0.3}), (8, {"wer": 0.4})]
  assert history_lib.best(history, "wer") == (4, {"wer": 0.3})  # the first of equals
  assert history_lib.patience_ran_out(history, "wer", 2)
  assert not history_lib.patience_ran_out(history[:3], "wer", 2)
  assert not history_lib.patience_ran_out(history, "wer", 0)


def test_history_survives_a_resume(tmp_path):
  rows = [{"step": 2, "split": "dev", "wer": 0.5}, {"step": 2, "split": "other", "wer": 0.9},
          {"step": 2, "split": "train", "loss": 3.0, "elapsed_s": 7.5, "cpu_s": 11.0},
          {"step": 4, "split": "dev", "wer": 0.4}, {"step": 4, "split": "dev", "wer": 0.35},
          {"step": 4, "split": "train", "loss": 2.0, "elapsed_s": 9.0, "cpu_s": 14.5},
          {"step": 6, "split": "dev", "wer": 0.3},
          {"step": 6, "split": "train", "loss": 1.0, "elapsed_s": 12.0}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  # Resumed from step 4: its last eval of step 4 counts, and the time spent up to step 4.
  history = lambda step: history_lib.history(str(tmp_path), step, "dev")
  assert history(4) == ([(2, {"wer": 0.5}), (4, {"wer": 0.35})], (9.0, 14.5))
  assert history(3) == ([(2, {"wer": 0.5})], (7.5, 11.0))
  assert history(0) == ([], (0.0, 0.0))


def test_early_stop_and_test_split_use_the_best_step(tmp_path, monkeypatch, shared_data_dir):
  monkeypatch.setenv("ATTENTION_JAX_DATA_DIR", shared_data_dir)
  # A zero learning rate: the first evaluation stays the best, so patience 2 stops at step 6.
  config = _config(test=True, early_stop_patience=2, select_by="loss")
  config.optim.learning_rate = 0.0
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["stopped_early"] and result["step"] == 6
  assert result["best_step"] == 2 and result["test_step"] == 2 and result["test_split"] == "test"
  examples = [json.loads(line) for line in open(tmp_path / "run" / "predictions_test.jsonl")]
  assert len(examples) == 1000  # the whole test split
  assert all(e["correct"] == (e["prediction"] in e["references"]) for e in examples)
  accuracy = sum(e["correct"] for e in examples) / len(examples)
  assert result["test"]["sequence_accuracy"] == pytest.approx(accuracy)


def test_unknown_test_split_is_a_config_error(tmp_path, monkeypatch, shared_data_dir):
  monkeypatch.setenv("ATTENTION_JAX_DATA_DIR", shared_data_dir)
  config = _config(test=True)
  config.evals.test.split = "tset"
  with pytest.raises(loop.ConfigError, match="evals.test.split='tset' is not a split"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def _ema_config(ema_decay):
  config = _config(steps=2, checkpoint_every=1, log_every=1)
  config.optim.ema_decay = ema_decay
  return config


def test_a_run_evaluates_and_decodes_with_the_average(tmp_path, monkeypatch, shared_data_dir,
                                                      numpy_ema):
  monkeypatch.setenv("ATTENTION_JAX_DATA_DIR", shared_data_dir)
  runs = {}
  for decay in (0.0, 0.5):
    runs[decay] = str(tmp_path / f"ema{decay}")
    loop.train_and_evaluate(_ema_config(decay), runs[decay])
  logs = {d: [json.loads(line) for line in open(os.path.join(w, "metrics.jsonl"))]
          for d, w in runs.items()}
  train = {d: [r["loss"] for r in log if r["split"] == "train"] for d, log in logs.items()}
  dev = {d: [r["loss"] for r in log if r["split"] == "dev"] for d, log in logs.items()}
  assert train[0.0] == train[0.5] and len(train[0.0]) == 2  # the same training...
  assert dev[0.0] != dev[0.5]  # ...evaluated with other parameters
  # The averaged run's checkpoint decodes with p0 averaged with the plain run's p1 and p2.
  config = _ema_config(0.5)
  task = tasks.build_task(config, data.from_config(config.data))
  tx, _ = optim.make_optimizer(config.optim, config.train.steps)
  mesh = partition.make_mesh(config.train.mesh_shape)
  first, _ = setup.create_state(task, tx, jax.random.key(config.seed), config.data.batch_size,
                                mesh)
  flat = lambda tree: dict(jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0])
  trajectory = [flat(first.params)] + [
      flat(ocp.StandardCheckpointer().restore(
          os.path.join(runs[0.0], "checkpoints", str(step), "state"))["params"])
      for step in (1, 2)]
  got = flat(predict.restore_params(config, task, runs[0.5], "checkpoints", 2))
  want = numpy_ema(trajectory, 0.5)
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6)
  assert any(not np.allclose(got[k], trajectory[-1][k]) for k in want)
  # An ensemble of the two restores each with its own optimizer: p2, and the average.
  configs = ensemble.load_members([runs[0.0], runs[0.5]])
  members = ensemble.restore(configs, [task] * 2, [runs[0.0], runs[0.5]],
                             [[("checkpoints", 2)]] * 2, say=lambda line: None)
  # A member of checkpoints 1 and 2 (DIR@1+2) is their mean parameters.
  members += ensemble.restore(configs[:1], [task], [runs[0.0]],
                              [[("checkpoints", 1), ("checkpoints", 2)]], say=lambda line: None)
  mean = {k: (trajectory[1][k] + trajectory[2][k]) / 2 for k in want}  # steps 1 and 2
  for member, expected in zip(members, (trajectory[-1], want, mean), strict=True):
    for k, value in flat(member).items():
      np.testing.assert_allclose(value, expected[k], rtol=1e-5, atol=1e-6)


def test_a_decay_of_one_is_refused():
  with pytest.raises(validate.ConfigError, match=r"optim.ema_decay=1.0 is out of range"):
    validate.check_config(_ema_config(1.0))
