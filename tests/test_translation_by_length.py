"""BLEU by source length (experiments/translation_deu_eng.py, launch/by_length.py) from
prediction files it did not write, against sacrebleu called directly."""
import json
import os

import pytest
import sacrebleu

from attention_jax import experiment
from launch import by_length

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEU_ENG = experiment.load(os.path.join(ROOT, "experiments", "translation_deu_eng.py"))

EXAMPLES = [  # (source, prediction, references)
    ("das Haus", "the house", ["the house", "the home"]),
    ("ein Hund", "a cat", ["a dog"]),
    ("er geht nach Hause", "he goes to the house", ["he goes home"]),
    ("sie hat es gestern im Garten gesehen", "she saw it in the garden yesterday",
     ["she saw it in the garden yesterday", "yesterday she saw it in the garden"]),
]


def _write(path, examples):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    for source, prediction, references in examples:
      f.write(json.dumps({"source": source, "prediction": prediction, "references": references,
                          "correct": prediction in references}) + "\n")


def test_bleu_per_bucket_is_sacrebleu_on_that_buckets_sentences(tmp_path):
  path = str(tmp_path / "p.jsonl")
  _write(path, EXAMPLES)
  got = by_length.bucket_scores(path, DEU_ENG.BUCKETS, DEU_ENG._words, DEU_ENG._bleu)
  assert set(got) == {(1, 2), (4, 4), (7, 9)}
  short = sacrebleu.corpus_bleu(["the house", "a cat"], [["the house", "a dog"],
                                                         ["the home", "a dog"]]).score
  assert got[(1, 2)] == (pytest.approx(short), 2)
  assert got[(4, 4)] == (pytest.approx(sacrebleu.corpus_bleu(
      ["he goes to the house"], [["he goes home"]]).score), 1)
  assert got[(7, 9)] == (pytest.approx(100.0), 1)


def test_main_averages_seeds(tmp_path, capsys):
  trials = {}
  for seed, examples in enumerate([EXAMPLES, [(s, "nothing like it", r) for s, _, r in EXAMPLES]]):
    name = f"attention=none,seed={seed}"
    _write(str(tmp_path / name / "predictions_test.jsonl"), examples)
    trials[name] = {"overrides": {"attention": "none", "seed": seed}}
  (tmp_path / "sweep.json").write_text(json.dumps({"trials": trials}))
  assert DEU_ENG.main([f"--root={tmp_path}"]) == 0
  table = (tmp_path / "report" / "bleu_by_length.md").read_text()
  assert "| attention=none | 2 |" in table and "| 50.0 |" in table  # (100 + 0) / 2 at 7-9 words
  assert "| examples | | 2 | 1 | 1 |" in table  # the empty buckets left out
  assert "| configuration | seeds | 1-2 | 4 | 7-9 |" in table
  assert (tmp_path / "report" / "bleu_by_length.png").read_bytes()[:4] == b"\x89PNG"
  assert "bleu_by_length.png" in capsys.readouterr().out


def test_a_length_outside_the_buckets_names_the_file_and_line(tmp_path):
  path = str(tmp_path / "p.jsonl")
  _write(path, EXAMPLES)
  with pytest.raises(ValueError, match=r"p.jsonl:4: source length 7 is in no bucket"):
    by_length.bucket_scores(path, ((1, 4),), DEU_ENG._words, DEU_ENG._bleu)


def test_rows_keep_the_sweeps_order_not_the_manifests_sorted_names(tmp_path):
  trials = {}
  for index, attention in enumerate(["none", "luong", "bahdanau"]):  # not alphabetical
    name = f"attention={attention}"
    _write(str(tmp_path / name / "predictions_test.jsonl"), EXAMPLES)
    trials[name] = {"index": index, "overrides": {"attention": attention}}
  (tmp_path / "sweep.json").write_text(json.dumps({"trials": trials}, sort_keys=True))
  assert DEU_ENG.main([f"--root={tmp_path}"]) == 0
  rows = [line.split(" | ")[0] for line in
          (tmp_path / "report" / "bleu_by_length.md").read_text().splitlines()[2:5]]
  assert rows == ["| attention=none", "| attention=luong", "| attention=bahdanau"]
