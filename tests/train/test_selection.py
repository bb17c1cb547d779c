"""Best-step selection, early stopping on the dev metric, and the test split scored with the
best step's parameters."""
import json
import os

import pytest

from attention_jax import experiment
from attention_jax.train import evaluation, loop

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(ROOT, "tests", "launch", "sweep_experiment.py")


def _config(**train):
  config = experiment.load(TINY).get_config("steps=20")
  config.train.update(eval_every=2, heatmap_examples=0, **train)
  return config


def test_selection_metric_and_direction():
  config = _config()
  assert evaluation.selection_metric(config, {"loss": 1.0, "wer": 0.3}) == "wer"
  assert evaluation.selection_metric(config, {"loss": 1.0, "bleu": 20.0}) == "bleu"
  assert evaluation.selection_metric(config, {"loss": 1.0}) == "loss"
  assert evaluation.better("bleu", 21.0, 20.0) and not evaluation.better("wer", 0.4, 0.3)
  history = [(2, {"wer": 0.5}), (4, {"wer": 0.3}), (6, {"wer": 0.3}), (8, {"wer": 0.4})]
  assert loop._best(config, history) == (4, {"wer": 0.3})  # the first of equals
  config.train.early_stop_patience = 2
  assert loop._patience_ran_out(config, history)
  assert not loop._patience_ran_out(config, history[:3])
  config.train.early_stop_patience = 0
  assert not loop._patience_ran_out(config, history)


def test_history_survives_a_resume(tmp_path):
  rows = [{"step": 2, "split": "eval", "wer": 0.5},
          {"step": 2, "split": "train", "loss": 3.0, "elapsed_s": 7.5},
          {"step": 4, "split": "eval", "wer": 0.4}, {"step": 4, "split": "eval", "wer": 0.35},
          {"step": 4, "split": "train", "loss": 2.0, "elapsed_s": 9.0},
          {"step": 6, "split": "eval", "wer": 0.3},
          {"step": 6, "split": "train", "loss": 1.0, "elapsed_s": 12.0}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  # Resumed from step 4: its last eval of step 4 counts, and the time spent up to step 4.
  assert loop._history(str(tmp_path), 4) == ([(2, {"wer": 0.5}), (4, {"wer": 0.35})], 9.0)
  assert loop._history(str(tmp_path), 3) == ([(2, {"wer": 0.5})], 7.5)
  assert loop._history(str(tmp_path), 0) == ([], 0.0)


def test_early_stop_and_test_split_use_the_best_step(tmp_path, monkeypatch):
  monkeypatch.setenv("ATTENTION_JAX_DATA_DIR", str(tmp_path / "data"))
  # A zero learning rate: the first evaluation stays the best, so patience 2 stops at step 6.
  config = _config(early_stop_patience=2, test_split="test", select_by="loss")
  config.optim.learning_rate = 0.0
  result = loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert result["stopped_early"] and result["step"] == 6
  assert result["best_step"] == 2 and result["test_step"] == 2 and result["test_split"] == "test"
  examples = [json.loads(line) for line in open(tmp_path / "run" / "predictions_test.jsonl")]
  assert len(examples) == 1000  # the whole test split
  assert all(e["correct"] == (e["prediction"] in e["references"]) for e in examples)
  accuracy = sum(e["correct"] for e in examples) / len(examples)
  assert result["test"]["sequence_accuracy"] == pytest.approx(accuracy)


def test_unknown_test_split_is_a_config_error(tmp_path, monkeypatch):
  monkeypatch.setenv("ATTENTION_JAX_DATA_DIR", str(tmp_path / "data"))
  with pytest.raises(loop.ConfigError, match="train.test_split='tset' is not a split"):
    loop.train_and_evaluate(_config(test_split="tset"), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
