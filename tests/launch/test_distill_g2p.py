"""launch.distill_g2p: a teacher's outputs written as a g014b2b split that builds into the
standard data set with the same dev and test words and references and the teacher's train
targets; its refusals."""
import json
import os
import re

import pytest

from attention_jax.data import cmudict_g2p, registry
from launch import distill_g2p

SOUNDS = {"B": "B", "D": "D", "K": "K", "L": "L", "M": "M", "N": "N", "A": "AE", "E": "EH",
          "I": "IH", "O": "OW", "U": "AH", "T": "T", "P": "P", "S": "S"}
TRAIN = [c + v + "L" for c in "BDKLMN" for v in "AEIOU"]  # 30 words, 5 go to dev
TEST = ["DAB", "KIT", "LOT", "MUD", "NAP", "PET", "SUN", "TOP'S"]
DEV_WORDS = 5


def _pron(word: str) -> str:
  return " ".join(SOUNDS[c] for c in word if c != "'")


def _write(directory, name: str, lines: list[str]) -> None:
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
    f.write("".join(line + "\n" for line in lines))


@pytest.fixture
def source(tmp_path):
  """A tiny g014b2b split: three train words with a second pronunciation on its own line,
  one test word with two references."""
  train = [f"{w}\t{_pron(w)}" for w in TRAIN] + [f"{w}\t{_pron(w)} AH" for w in TRAIN[:3]]
  test = [f"{w}\t{_pron(w)}" + ("\t" + _pron(w) + " S" if w == "KIT" else "") for w in TEST]
  _write(tmp_path / "source", "g014b2b.train", train)
  _write(tmp_path / "source", "g014b2b.ref", test)
  return str(tmp_path / "source")


def _dataset(name: str, manual_dir, data_dir):
  config = cmudict_g2p.CmudictConfig(name=name, stress=False, source="g014b2b",
                                     dev_words=DEV_WORDS)
  return registry.get_dataset("cmudict_g2p", data_dir=str(data_dir), manual_dir=str(manual_dir),
                              config=config)


def _teacher(directory, outputs: dict, name: str = "dev_beam") -> str:
  """A workdir with the evaluator's predictions file: one record per train record (a word
  with two pronunciations is decoded twice, to the same output)."""
  lines = [json.dumps({"source": w, "prediction": p, "references": [], "correct": False})
           for w, p in outputs.items()]
  _write(directory, f"predictions_{name}.jsonl", lines + lines[:2])
  return str(directory)


def _args(*argv):
  return distill_g2p._parser().parse_args(list(argv))


def _texts(dataset, split):
  return sorted((r["inputs"], r["targets"], tuple(r["references"]))
                for r in dataset.texts(split))


@pytest.mark.parametrize("keep", [False, True])
def test_the_student_split_keeps_dev_and_test_and_takes_the_teachers_train(
    source, tmp_path, keep):
  original = _dataset(f"distill_source_{keep}", source, tmp_path / "data_source")
  words = sorted({r["inputs"] for r in original.texts("train")})
  # The teacher: each word's phonemes reversed (valid, mostly wrong); one empty output.
  outputs = {w: " ".join(_pron(w.upper()).split()[::-1]) for w in words}
  outputs[words[0]] = ""
  teacher = _teacher(tmp_path / "teacher", outputs)
  out = tmp_path / "distilled"
  argv = [f"--teacher={teacher}", f"--out={out}", f"--source={source}"]
  record = distill_g2p.write(_args(*argv, *(["--keep-references"] if keep else [])),
                             dev_words=DEV_WORDS)
  dictionary = {}
  for r in original.texts("train"):
    dictionary.setdefault(r["inputs"], []).append(r["targets"])
  unlike = sum(outputs[w] not in dictionary[w] for w in words[1:])
  assert record["train_words"] == len(words) == 25 and record["dev_words"] == DEV_WORDS
  assert record["teacher_wrong_train_words"] == unlike >= 15  # L?L reversed is itself
  assert record["empty_teacher_outputs"] == 1

  student = _dataset(f"distill_student_{keep}", out, tmp_path / "data_student")
  for split in ("dev", "test"):  # the same words, references and targets
    assert _texts(student, split) == _texts(original, split)
  assert student.metadata["dev_words_sha256"] == original.metadata["dev_words_sha256"] == \
      record["dev_words_sha256"]
  expected = {(w, p) for w in words[1:] for p in [outputs[w]] + (dictionary[w] if keep else [])}
  expected |= {(words[0], p) for p in dictionary[words[0]]}  # empty: the dictionary's
  assert sorted(set((w, t) for w, t, _ in _texts(student, "train"))) == sorted(expected)
  dev = {r["inputs"]: r["references"] for r in original.texts("dev")}
  assert len(student.texts("train")) == len(expected)
  assert record["pronunciations_written"] == len(expected) + sum(map(len, dev.values()))
  assert student.target_vocab.symbols == original.target_vocab.symbols


def test_refusals_name_the_problem_and_write_nothing(source, tmp_path, capsys):
  original = _dataset("distill_refusals", source, tmp_path / "data_source")
  words = sorted({r["inputs"] for r in original.texts("train")})
  good = {w: _pron(w.upper()) for w in words}
  out = tmp_path / "out"
  cases = [({w: good[w] for w in words[1:]}, f"miss 1 of 25 train words (first: {words[0]!r})"),
           ({**good, "zzz": "Z"}, "hold 1 words that are not train words (first: 'zzz')"),
           ({w: "L" for w in words}, "no train pronunciation left holds AE, AH, B, D, EH, "
                                     "IH, K, M, N, OW: the student could not output it")]
  for i, (outputs, message) in enumerate(cases):
    teacher = _teacher(tmp_path / f"teacher{i}", outputs)
    with pytest.raises(distill_g2p.DistillError, match=re.escape(message)):
      distill_g2p.write(_args(f"--teacher={teacher}", f"--out={out}", f"--source={source}"),
                        dev_words=DEV_WORDS)
    assert not out.exists()
  teacher = _teacher(tmp_path / "twice", good)
  with open(os.path.join(teacher, "predictions_dev_beam.jsonl"), "a") as f:
    f.write(json.dumps({"source": words[3], "prediction": "B", "references": []}) + "\n")
  with pytest.raises(distill_g2p.DistillError, match=f"jsonl:28: {words[3]!r} predicted twice"):
    distill_g2p.write(_args(f"--teacher={teacher}", f"--out={out}", f"--source={source}"),
                      dev_words=DEV_WORDS)
  # Through the command line: exit 2, one line, an existing split left as it was.
  _teacher(teacher, good, name="test_beam")
  _write(out, "g014b2b.train", ["KEPT\tK EH P T"])
  capsys.readouterr()  # the data set's build progress
  for argv, message in (
      ([f"--teacher={teacher}", f"--out={tmp_path / 'new'}"],
       f"{teacher} holds 2 predictions_*.jsonl files; name one with --evaluator"),
      ([f"--teacher={teacher}", "--evaluator=test_beam", f"--out={out}"],
       f"{out} already holds a g014b2b split; use another --out"),
      ([f"--teacher={teacher}", "--evaluator=test_beam", f"--out={tmp_path / 'new'}",
        f"--source={tmp_path}"], f"--source={tmp_path} holds no g014b2b.train")):
    assert distill_g2p.main(argv) == 2
    assert capsys.readouterr().err == f"launch.distill_g2p: {message}\n"
  assert (out / "g014b2b.train").read_text() == "KEPT\tK EH P T\n"
  assert not (tmp_path / "new").exists()


def test_the_experiments_distilled_argument_reads_the_split_into_its_own_data_dir():
  from attention_jax import experiment  # pylint: disable=import-outside-toplevel
  from launch import trials  # pylint: disable=import-outside-toplevel
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))), "experiments", "g2p_attention.py")
  config = experiment.load(path).get_config("distilled=runs/d")
  assert config.data.name == "cmudict_g2p/standard"
  assert (config.data.manual_dir, config.data.data_dir) == ("runs/d", "runs/d/data")
  (student,) = trials.expand(path, "standard_distilled", 0)
  assert student.config.data.manual_dir == "runs/g2p_standard_distilled/ens4"
  assert student.config.optim.ema_decay == 0.999 and student.config.train.steps == 40000
