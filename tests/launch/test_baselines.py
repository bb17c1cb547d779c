"""launch.baselines: the peer G2P systems trained and scored end to end on a tiny generated
g014b2b-style split, their scores recomputed from the written prediction files, Sequitur's
resumed ramp, and the one-line errors."""
import importlib.util
import json
import os
import random
import sys

import pytest

from attention_jax.data import cmudict_g2p, registry
from launch import baselines, peers, report

SOUNDS = {"B": "B", "D": "D", "K": "K", "L": "L", "M": "M", "N": "N", "P": "P", "S": "S",
          "T": "T", "X": "K S", "A": "AE", "E": "EH", "I": "IH", "O": "OW", "U": "AH"}


def _words(count: int, seed: int = 0) -> list[str]:
  """Distinct random words of 3-7 letters (no X). Phonetisaurus' 8-gram estimation fails on
  too regular a lexicon, such as only consonant-vowel-consonant words."""
  rng, letters, words = random.Random(seed), sorted(set(SOUNDS) - {"X"}), []
  while len(words) < count:
    word = "".join(rng.choice(letters) for _ in range(rng.randint(3, 7)))
    words += [word] if word not in words else []
  return words


# 45 train words and 10 test words; AXE's X is never in train.
TRAIN, TEST = _words(54)[:45], _words(54)[45:] + ["AXE"]

needs_phonetisaurus = pytest.mark.skipif(importlib.util.find_spec("phonetisaurus") is None,
                                         reason="phonetisaurus is not installed (the peers extra)")
needs_sequitur = pytest.mark.skipif(importlib.util.find_spec("sequitur") is None,
                                    reason="sequitur-g2p is not installed (the peers extra)")


def pron(word: str) -> str:
  return " ".join(SOUNDS[c] for c in word)


def lexicons() -> tuple[dict, dict]:
  """(train, test): word -> pronunciations, as the files below hold them."""
  train = {w: [pron(w)] + ([pron(w) + " AH"] if w in TRAIN[:4] else []) for w in TRAIN}
  test = {w: [pron(w)] + ([pron(w) + " Z"] if i < 2 else []) for i, w in enumerate(TEST)}
  return train, test


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """The tiny split built as a cmudict_g2p config with 5 dev words."""
  manual = tmp_path_factory.mktemp("g014b2b")
  train, test = lexicons()
  (manual / "g014b2b.train").write_text(
      "".join(f"{w}\t{p}\n" for w, ps in train.items() for p in ps))
  (manual / "g014b2b.ref").write_text(
      "".join(f"{w}\t" + "\t".join(ps) + "\n" for w, ps in test.items()))
  config = cmudict_g2p.CmudictConfig(name="standard_tiny", stress=False, source="g014b2b",
                                     dev_words=5)
  return registry.get_dataset("cmudict_g2p", data_dir=str(tmp_path_factory.mktemp("data")),
                              manual_dir=str(manual), config=config)


def args(workdir, system, *extra):
  return baselines._parser().parse_args(
      [f"--data=cmudict_g2p/standard", f"--system={system}", f"--workdir={workdir}", *extra])


def edits(a: list, b: list) -> int:
  """Levenshtein distance, the test's own."""
  row = list(range(len(b) + 1))
  for i, x in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, y in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
  return row[-1]


def rescore(path: str, references: dict) -> tuple[float, float]:
  """(WER vs any reference, PER vs the closest) of a predictions file, every word counted."""
  with open(path) as f:
    guesses = dict(line.rstrip("\n").split("\t") for line in f)
  assert sorted(guesses) == sorted(references)
  wrong = sum(guesses[w].split() not in [r.split() for r in refs] for w, refs in references.items())
  closest = [min((edits(r.split(), guesses[w].split()), len(r.split())) for r in refs)
             for w, refs in references.items()]
  return wrong / len(references), sum(d for d, _ in closest) / sum(n for _, n in closest)


def check_scores(workdir: str, result: dict, tiny) -> None:
  train, test = lexicons()
  dev_words = [r["inputs"] for r in tiny.texts("dev")]
  for split, refs in (("test", {w.lower(): ps for w, ps in test.items()}),
                      ("dev", {w: train[w.upper()] for w in dev_words})):
    wer, per = rescore(os.path.join(workdir, f"{split}.predictions.tsv"), refs)
    scores = result["test" if split == "test" else "final"]
    assert scores["wer"] == pytest.approx(wer) and scores["per"] == pytest.approx(per)
  assert result["words"] == {"dev": 5, "test": len(TEST)}


@needs_phonetisaurus
def test_phonetisaurus_end_to_end(tiny, tmp_path):
  workdir = str(tmp_path / "peers" / "phonetisaurus")
  result = baselines.run(args(workdir, "phonetisaurus"), tiny)
  check_scores(workdir, result, tiny)
  assert result["test"]["wer"] < 0.5  # it learned the letter-to-sound map
  assert result["order"] == 8 and result["train_cpu_s"] > 0 and result["train_wall_s"] > 0
  assert result["cpu_time_s"] == result["train_cpu_s"]
  with open(os.path.join(workdir, "train.lex")) as f:
    assert len(f.readlines()) == len(tiny.texts("train"))
  manifest, rows = report.collect(str(tmp_path / "peers"), which="test")
  assert manifest["trials"]["phonetisaurus"]["status"] == "done"
  assert [r["name"] for r in rows] == ["phonetisaurus"]
  assert rows[0]["overrides"] == {"system": "phonetisaurus", "data": "cmudict_g2p/standard_tiny",
                                  "order": 8}
  assert rows[0]["metrics"]["wer"] == result["test"]["wer"]
  # A second system on the same workdir is refused.
  with pytest.raises(baselines.BaselineError, match="holds a phonetisaurus run"):
    baselines.run(args(workdir, "sequitur"), tiny)


@needs_sequitur
def test_sequitur_ramp_resumes_from_the_last_order(tiny, tmp_path):
  workdir = str(tmp_path / "peers" / "sequitur")
  first = baselines.run(args(workdir, "sequitur", "--max-order=1"), tiny)
  assert first["order"] == 1
  model_1 = os.path.join(workdir, "model-1")
  stamp = os.stat(model_1).st_mtime_ns
  second = baselines.run(args(workdir, "sequitur", "--max-order=2"), tiny)
  check_scores(workdir, second, tiny)
  assert second["order"] == 2 and os.stat(model_1).st_mtime_ns == stamp  # order 1 reused
  assert second["no_output"]["test"] == 1  # AXE: Sequitur cannot spell an unseen letter
  with open(os.path.join(workdir, "times.json")) as f:
    times = json.load(f)
  assert sorted(times) == ["order 1", "order 2"]
  assert second["train_cpu_s"] == pytest.approx(first["train_cpu_s"] + times["order 2"]["cpu_s"])
  # No budget left: no order starts, and the run says what to do.
  with pytest.raises(peers.ToolError, match="no order finished within the budget"):
    baselines.run(args(str(tmp_path / "peers" / "s2"), "sequitur", "--budget-hours=1e-9"), tiny)


@needs_sequitur
def test_sequitur_mend_keeps_swig_types_alive():
  """Training frees millions of objects, each releasing SWIG's type capsule once too often."""
  import sequitur  # pylint: disable=import-outside-toplevel,unused-import
  import swig_runtime_data4  # pylint: disable=import-outside-toplevel
  from launch import sequitur_g2p  # pylint: disable=import-outside-toplevel
  capsule = swig_runtime_data4.type_pointer_capsule
  before = sys.getrefcount(capsule)
  sequitur_g2p.keep_swig_types()
  assert sys.getrefcount(capsule) - before == 2 ** 40


def test_missing_output_is_wrong_with_the_whole_reference():
  records = [{"inputs": "ab", "references": ["AE B", "AE B AH"]},
             {"inputs": "cd", "references": ["K D"]}]
  scores, missing = baselines.score(records, {"cd": "K D"})
  assert missing == 1
  assert scores["wer"] == 0.5 and scores["per"] == 2 / 4  # ab: 2 edits to its 2-phoneme ref


def test_errors(tiny, tmp_path, capsys, monkeypatch):
  for data_name, message in (("cmudict_g2p/nope", "Unknown config 'nope'"),
                             ("algorithmic/copy", "the peers are G2P systems")):
    code = baselines.main([f"--data={data_name}", "--system=sequitur",
                           f"--workdir={tmp_path / 'w'}"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
  with pytest.raises(SystemExit):
    baselines.main(["--data=cmudict_g2p/standard", "--system=moses", f"--workdir={tmp_path}"])
  assert "invalid choice: 'moses'" in capsys.readouterr().err
  monkeypatch.setattr(peers.Phonetisaurus, "package", "no_such_phonetisaurus")
  with pytest.raises(peers.ToolError,
                     match=r"phonetisaurus is not installed: run `pip install -e '\.\[peers\]'`"):
    baselines.run(args(str(tmp_path / "w"), "phonetisaurus"), tiny)
  other = tmp_path / "root"
  other.mkdir()
  (other / "sweep.json").write_text(json.dumps({"config": "x.py", "sweep": "s", "trials": {}}))
  monkeypatch.setattr(peers.Phonetisaurus, "package", "json")  # "installed"; never trains here
  monkeypatch.setattr(peers.Phonetisaurus, "version", lambda self: "0")
  with pytest.raises(baselines.BaselineError, match="holds the sweep x.py"):
    baselines.run(args(str(other / "p"), "phonetisaurus"), tiny)
