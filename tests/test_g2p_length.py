"""WER by word length (experiments/g2p_length.py) from prediction files it did not write."""
import json
import os

import pytest

from attention_jax import experiment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
G2P_LENGTH = experiment.load(os.path.join(ROOT, "experiments", "g2p_length.py"))


def _write(path, examples):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for word, correct in examples:
      f.write(json.dumps({"source": word, "prediction": "x", "references": ["y"],
                          "correct": correct}) + "\n")


def test_wer_by_length_buckets(tmp_path):
  path = str(tmp_path / "p.jsonl")
  _write(path, [("cat", True), ("dog", False), ("house", False), ("extraordinarily", True),
                ("onomatopoeia", False)])
  got = G2P_LENGTH.wer_by_length(path)
  assert got == {(1, 4): (0.5, 2), (5, 5): (1.0, 1), (11, 12): (1.0, 1), (13, 40): (0.0, 1)}


def test_main_averages_seeds_into_a_table_and_plot(tmp_path, capsys):
  trials = {}
  for seed, correct in enumerate([True, False]):
    name = f"attention=none,seed={seed}"
    _write(str(tmp_path / name / "predictions_test.jsonl"), [("cat", correct), ("house", True)])
    trials[name] = {"overrides": {"attention": "none", "seed": seed}}
  (tmp_path / "sweep.json").write_text(json.dumps({"trials": trials}))
  assert G2P_LENGTH.main([f"--root={tmp_path}"]) == 0
  table = (tmp_path / "report" / "wer_by_length.md").read_text()
  # Only the buckets with examples: 1-4 and 5 letters (the seven empty ones are left out).
  assert "| configuration | seeds | 1-4 | 5 |\n" in table
  assert "| attention=none | 2 | 50.0 | 0.0 |\n" in table
  assert "| examples | | 1 | 1 |\n" in table
  assert (tmp_path / "report" / "wer_by_length.png").read_bytes()[:4] == b"\x89PNG"
  empty = tmp_path / "empty"
  empty.mkdir()
  (empty / "sweep.json").write_text(json.dumps({"trials": {}}))
  assert G2P_LENGTH.main([f"--root={empty}"]) == 2
  assert "no trial" in capsys.readouterr().err


def test_its_config_is_g2p_attention_with_the_test_split():
  config = G2P_LENGTH.get_config("attention=none")
  test = config.evals.test
  assert (test.split, test.use_best, test.predictions) == ("test", True, True)
  assert config.model.attention == "none"
  with pytest.raises(ValueError, match="unknown config argument 'bogus'"):
    G2P_LENGTH.get_config("bogus=1")
