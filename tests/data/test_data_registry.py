"""Registry, data dir resolution, the prepare command, vocabularies and splits helpers."""
import os

import pytest

from attention_jax import data
from attention_jax.data import paths, prepare, registry, splits
from attention_jax.data.errors import DataError, MissingDataError
from attention_jax.data.vocab import SymbolVocabulary


def test_unknown_names_list_the_known_ones():
  with pytest.raises(DataError, match=r"Unknown data set 'cmu'; known: "
                     r"cmudict_g2p/\{stress,no_stress,standard\}, "
                     r"algorithmic/\{copy,reverse,sort,addition\}, freedict_deu_eng, wmt14"):
    data.get_dataset("cmu")
  with pytest.raises(DataError, match="Unknown config 'mul' of data set 'algorithmic'; known: copy"):
    data.get_dataset("algorithmic/mul")
  assert registry.parse_name("cmudict_g2p") == ("cmudict_g2p", "stress")
  assert registry.parse_name("freedict_deu_eng") == ("freedict_deu_eng", "")


def test_data_dir_precedence(monkeypatch, tmp_path):
  monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
  monkeypatch.delenv("TFDS_DATA_DIR", raising=False)
  assert paths.resolve_data_dir() == os.path.expanduser("~/tensorflow_datasets")
  monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
  assert paths.resolve_data_dir() == str(tmp_path / "tfds")
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "ours"))
  assert paths.resolve_data_dir() == str(tmp_path / "ours")
  assert paths.resolve_data_dir(str(tmp_path / "cfg")) == str(tmp_path / "cfg")


def test_prepare_command_and_env_data_dir(monkeypatch, tmp_path, capsys):
  monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
  assert prepare.expand(["cmudict_g2p", "algorithmic/sort", "freedict_deu_eng"]) == [
      "cmudict_g2p/stress", "cmudict_g2p/no_stress", "cmudict_g2p/standard", "algorithmic/sort",
      "freedict_deu_eng"]
  assert prepare.main(["algorithmic/sort"]) == 0
  out = capsys.readouterr().out
  assert "algorithmic/sort: train 20,000, dev 1,000, test 1,000 records" in out
  assert (tmp_path / "algorithmic" / "sort" / "1.0.0" / "vocab_inputs.json").exists()
  # Opening it again reads the prepared data (no rebuild) without network or builder code.
  dataset = data.get_dataset("algorithmic/sort", prepare_if_missing=False)
  assert dataset.metadata["test_lengths"] == [21, 40]
  assert prepare.main(["nope"]) == 1
  assert "Unknown data set 'nope'" in capsys.readouterr().err


def test_not_prepared_errors(tmp_path):
  with pytest.raises(MissingDataError, match="python -m attention_jax.data.prepare algorithmic/copy"):
    data.get_dataset("algorithmic/copy", data_dir=str(tmp_path), prepare_if_missing=False)
  with pytest.raises(MissingDataError, match="wmt14_translate/de-en is not prepared.*tfds build"):
    data.get_dataset("wmt14", data_dir=str(tmp_path))
  assert not any(tmp_path.iterdir())


def test_split_keys():
  keys = [f"k{i}" for i in range(100)] * 2  # duplicates are merged
  parts = splits.split_keys(keys, {"test": 10, "dev": 5, "train": None}, seed=7)
  assert [len(parts[s]) for s in ("test", "dev", "train")] == [10, 5, 85]
  assert sorted(sum(parts.values(), [])) == sorted(set(keys))
  assert parts == splits.split_keys(reversed(keys), {"test": 10, "dev": 5, "train": None}, seed=7)
  assert parts != splits.split_keys(keys, {"test": 10, "dev": 5, "train": None}, seed=8)
  with pytest.raises(ValueError, match="do not fit"):
    splits.split_keys(keys, {"test": 90, "dev": 20, "train": None}, seed=0)


def test_symbol_vocabulary(tmp_path):
  vocab = SymbolVocabulary.build(["AH0 B", "B K"], "symbols")
  assert vocab.symbols == ["AH0", "B", "K"] and vocab.size == 7
  assert vocab.encode("K AH0 ZZ") == [6, 4, data.UNK_ID]
  assert vocab.decode([data.BOS_ID, 6, 4, data.EOS_ID, 5]) == "K AH0"
  vocab.save(tmp_path / "v.json")
  again = SymbolVocabulary.load(tmp_path / "v.json")
  assert again.symbols == vocab.symbols and again.mode == "symbols"
  chars = SymbolVocabulary.build(["ab c"], "chars")
  assert chars.decode(chars.encode("c ab")) == "c ab"
  with pytest.raises(MissingDataError, match="does not exist"):
    SymbolVocabulary.load(tmp_path / "missing.json")


class _CountingReads:
  """Wraps an array_record source and counts its batched reads."""

  def __init__(self, inner):
    self.inner, self.reads = inner, 0

  def __len__(self):
    return len(self.inner)

  def __getitems__(self, keys):
    self.reads += 1
    return self.inner.__getitems__(keys)


@pytest.mark.parametrize("preload", [True, False])
def test_records_match_tfds_own_decoding_read_whole_or_by_batch(tiny_algorithmic, monkeypatch,
                                                                 preload):
  """A small split is read in one pass and kept; a large one (PRELOAD_BYTES 0 here) batch by
  batch. Either way each record is what TFDS itself decodes at that index."""
  monkeypatch.setattr(registry, "PRELOAD_BYTES", (64 << 20) if preload else 0)
  dataset = tiny_algorithmic("copy")
  source = dataset.source("train")
  source._source.data_source = counting = _CountingReads(source._source.data_source)
  tfds_source = dataset.builder.as_data_source(split="train")
  indices = [5, 0, len(source) - 1, 5, 3]
  for _ in range(3):
    got = source.getitems(indices)
    for i, record in zip(indices, got):
      theirs = tfds_source[i]
      assert record["inputs"] == theirs["inputs"].decode()
      assert record["targets"] == theirs["targets"].decode()
  assert counting.reads == (1 if preload else 3)
