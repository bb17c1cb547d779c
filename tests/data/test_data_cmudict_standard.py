"""cmudict_g2p/standard: built from a tiny g014b2b-style split in a manual dir, its bad
lines, the shipped split's files against their provenance, and the G2P experiments'
`standard` argument."""
import hashlib
import os
import re

import numpy as np
import pytest

from attention_jax import experiment
from attention_jax.data import cmudict_g2p, cmudict_standard, registry
from attention_jax.data.errors import DataError, DataFormatError, MissingDataError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The tiny split: 30 train words (3 with two pronunciations, listed on two lines as in
# g014b2b.train) and 8 test words (2 with two references on one line, as in g014b2b.ref).
_SOUNDS = {"B": "B", "D": "D", "K": "K", "L": "L", "M": "M", "N": "N", "P": "P", "S": "S",
           "T": "T", "A": "AE", "E": "EH", "I": "IH", "O": "OW", "U": "AH"}
TRAIN_WORDS = [c + v + "L" for c in "BDKLMN" for v in "AEIOU"]
TEST_WORDS = ["DAB", "KIT", "LOT", "MUD", "NAP", "PET", "SUN", "TOP'S"]


def _pron(word: str) -> str:
  return " ".join(_SOUNDS[c] for c in word if c != "'")


def write_split(directory, train_lines=None, ref_lines=None) -> tuple[list[str], list[str]]:
  """Writes g014b2b.train / .ref (the tiny split unless lines are given); returns the lines."""
  if train_lines is None:
    train_lines = [f"{w}\t{_pron(w)}" for w in TRAIN_WORDS]
    train_lines[4:4] = [f"{w}\t{_pron(w)} AH" for w in TRAIN_WORDS[:3]]  # second prons, apart
  if ref_lines is None:
    ref_lines = [f"{w}\t{_pron(w)}" + (f"\t{_pron(w)} Z" if i in (1, 5) else "")
                 for i, w in enumerate(TEST_WORDS)]
  os.makedirs(directory, exist_ok=True)
  for name, lines in (("g014b2b.train", train_lines), ("g014b2b.ref", ref_lines)):
    with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
      f.write("".join(line + "\n" for line in lines))
  return train_lines, ref_lines


def _lexicon(lines: list[str]) -> dict[str, list[str]]:
  """The test's own reading of the files: lower-cased word -> pronunciations in order."""
  out: dict[str, list[str]] = {}
  for line in lines:
    word, *prons = line.split("\t")
    out.setdefault(word.lower(), []).extend(prons)
  return out


def _sha256(path) -> str:
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def test_tiny_split_records_follow_the_files(tmp_path):
  manual = str(tmp_path / "manual")
  train_lines, ref_lines = write_split(manual)
  train, test = _lexicon(train_lines), _lexicon(ref_lines)
  config = cmudict_g2p.CmudictConfig(name="standard_tiny", stress=False, source="g014b2b",
                                     dev_words=5)
  dataset = registry.get_dataset("cmudict_g2p", data_dir=str(tmp_path / "d"),
                                 manual_dir=manual, config=config)
  texts = {s: dataset.texts(s) for s in ("train", "dev", "test")}
  words = {s: [r["inputs"] for r in rs] for s, rs in texts.items()}
  # Test: every ref word once, all its references, the first as the target.
  assert words["test"] == sorted(test)
  assert {r["inputs"]: r["references"] for r in texts["test"]} == test
  assert all(r["targets"] == test[r["inputs"]][0] for r in texts["test"])
  # Dev: 5 train-file words, drawn as documented (numpy PCG64, seed 2015, sorted words).
  order = np.random.default_rng(2015).permutation(len(train))
  expected_dev = sorted(sorted(train)[i] for i in order[:5])
  assert words["dev"] == expected_dev
  assert {r["inputs"]: r["references"] for r in texts["dev"]} == {w: train[w] for w in expected_dev}
  # Train: one record per pronunciation of every other train-file word.
  assert not set(words["train"]) & set(words["dev"])
  assert set(words["train"]) | set(words["dev"]) == set(train)
  pairs = sorted((r["inputs"], r["targets"]) for r in texts["train"])
  assert pairs == sorted((w, p) for w in train if w not in expected_dev for p in train[w])
  meta = dataset.metadata
  assert meta["source"] == "manual dir" and meta["split_seed"] == 2015 and not meta["stress"]
  assert meta["words"] == {"train": 25, "dev": 5, "test": 8}
  assert meta["pronunciations"] == {
      "train": len(pairs), "dev": sum(len(train[w]) for w in expected_dev), "test": 10}
  assert meta["source_sha256"] == {n: _sha256(os.path.join(manual, n))
                                   for n in ("g014b2b.train", "g014b2b.ref")}
  listed = "".join(f"{w}\n" for w in expected_dev).encode()
  assert meta["dev_words_sha256"] == hashlib.sha256(listed).hexdigest()
  assert dataset.target_vocab.symbols == sorted({p for ps in train.values() for pr in ps
                                                 for p in pr.split()})


@pytest.mark.parametrize("line, message", [
    ("ABC AE B K", r"g014b2b.train:2: expected WORD<TAB>PHONEMES"),
    ("ABC\tAE B QQ", r"g014b2b.train:2: unknown ARPAbet phoneme 'QQ'"),
    ("ABC\tAE1 B K", r"g014b2b.train:2: stress digit in 'AE1'"),
    ("AB-C\tAE B K", r"g014b2b.train:2: word 'AB-C' is not made of A-Z and apostrophes"),
    ("abc\tAE B K", r"g014b2b.train:2: word 'abc' is not made of A-Z"),
    ("ABC\t", r"g014b2b.train:2: empty pronunciation"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
  path = tmp_path / "g014b2b.train"
  path.write_text(f"ABE\tAE B\n{line}\n")
  with pytest.raises(DataFormatError, match=message):
    cmudict_standard.read_lexicon(path)


def test_build_refuses_a_test_word_in_train_and_half_a_manual_split(tmp_path):
  manual = tmp_path / "manual"
  write_split(manual, ref_lines=["DAB\tD AE B", TRAIN_WORDS[2] + "\tB AE"])
  with pytest.raises(DataFormatError,
                     match=rf"g014b2b.ref:2: test word '{TRAIN_WORDS[2]}' is also in the train"):
    registry.prepare("cmudict_g2p/standard", data_dir=str(tmp_path / "d"), manual_dir=str(manual))
  os.remove(manual / "g014b2b.ref")
  with pytest.raises(MissingDataError, match="has g014b2b.train but not g014b2b.ref"):
    cmudict_standard.source_files(str(manual))
  stressed = cmudict_g2p.CmudictConfig(name="standard_stress", source="g014b2b")
  with pytest.raises(DataError, match="the g014b2b split has no stress digits"):
    registry.prepare("cmudict_g2p", data_dir=str(tmp_path / "d"), config=stressed)


def test_shipped_split_matches_its_provenance():
  """The package's files are the published ones: their sha256 and counts as PROVENANCE.md
  states them (read from the package, never from outside the repository)."""
  directory = cmudict_standard.PACKAGE_DIR
  with open(os.path.join(directory, "PROVENANCE.md"), encoding="utf-8") as f:
    stated = dict(re.findall(r"^\| (g014b2b\.\w+) \| `([0-9a-f]{64})` \|$", f.read(), re.M))
  assert set(stated) == {"g014b2b.train", "g014b2b.ref"}
  for name, digest in stated.items():
    assert _sha256(os.path.join(directory, name)) == digest, name
  with open(os.path.join(directory, "g014b2b.train"), encoding="ascii") as f:
    train_words = [line.split("\t")[0] for line in f]
  assert (len(train_words), len(set(train_words))) == (113_438, 106_837)
  for name in ("LICENSE.CMUdict", "LICENSE.Phonetisaurus"):
    assert os.path.getsize(os.path.join(directory, name)) > 1000
  config = cmudict_g2p.CmudictG2p.builder_configs["standard"]
  assert (config.source, config.stress, config.dev_words) == ("g014b2b", False, 2_670)


def test_g2p_experiments_select_the_standard_split():
  for name in ("g2p_attention", "g2p_transformer"):
    module = experiment.load(os.path.join(ROOT, "experiments", f"{name}.py"))
    assert module.get_config("standard=True").data.name == "cmudict_g2p/standard"
    assert module.get_config("stress=False").data.name == "cmudict_g2p/no_stress"
