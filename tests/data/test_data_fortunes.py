"""fortunes builder, the "chars" tokenizer, tiny_shakespeare's registry entry and the LM pipeline.

Everything is built from a small fortunes directory written here (never from
/usr/share/games), and checked against references computed in plain Python.
"""
import hashlib
import os
import re

import numpy as np
import pytest
import tensorflow_datasets as tfds

from attention_jax.data import fortunes, lm_pipeline, registry
from attention_jax.data.errors import DataError, MissingDataError
from attention_jax.data.vocab import EOS_ID, SymbolVocabulary

# One xdist worker runs the whole module: its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("test_data_fortunes")

tfds.display_progress_bar(False)

ONE = {"process_index": 0, "process_count": 1, "num_threads": 0}
SEQ = 16


def _entry(i: int) -> str:
  # Varied lengths, internal newlines and a few non-ASCII characters.
  first = f"Fortune {i}: " + "ab cd ef "[: i % 9] + "é" * (i % 3)
  lines = [first] + [f"  line {j} of {i}" for j in range(i % 4)]
  return "\n".join(lines)


def _write_fortunes(directory) -> None:
  """alpha and beta (LF) and gamma (CRLF): 60 distinct non-empty entries plus noise."""
  os.makedirs(directory)
  alpha = "".join(f"{_entry(i)}\n%\n" for i in range(25)) + "%\n   \n%\n"  # empty, blank entries
  beta = "\n\n" + "\n%\n".join(_entry(i) for i in range(20, 45)) + "\n"  # 20-24 repeat alpha's
  beta += "%\n" + _entry(30) + "\n"  # a duplicate within the file, no final %
  gamma = "".join(f"{_entry(i)}\n%\n" for i in range(45, 60)).replace("\n", "\r\n")
  for name, text in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
    with open(os.path.join(directory, name), "w", encoding="utf-8", newline="") as f:
      f.write(text)
  # Ignored: strfile index, .u8 symlink, another symlink, a dotfile, a sub-directory.
  with open(os.path.join(directory, "alpha.dat"), "wb") as f:
    f.write(b"\x00\x02\xff\xfe not text")
  os.symlink("alpha", os.path.join(directory, "alpha.u8"))
  os.symlink("beta", os.path.join(directory, "zeta"))
  with open(os.path.join(directory, ".hidden"), "w") as f:
    f.write("hidden\n%\nnot a fortune\n")
  os.makedirs(os.path.join(directory, "off"))


def _reference_entries(directory) -> list[str]:
  """Distinct non-empty entries in sorted-file, file order (an independent parser)."""
  texts = []
  for name in ("alpha", "beta", "gamma"):
    with open(os.path.join(directory, name), "rb") as f:
      content = f.read().decode("utf-8").replace("\r\n", "\n")
    texts += [t.strip() for t in re.split(r"(?m)^%\n", content + "\n") if t.strip()]
  return list(dict.fromkeys(texts))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("fortunes")
  manual = str(root / "manual")
  _write_fortunes(manual)
  dataset = registry.get_dataset("fortunes", data_dir=str(root / "data"), manual_dir=manual)
  return dataset, manual, root


def _reference_stream(dataset, split) -> list[int]:
  ids = {c: n + 4 for n, c in enumerate(dataset.target_vocab.symbols)}  # specials are 0-3
  return [x for r in dataset.texts(split) for x in [ids.get(c, 3) for c in r["targets"]] + [EOS_ID]]


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _same(a, b):
  return set(a) == set(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_records_splits_and_metadata(built):
  dataset, manual, _ = built
  expected = _reference_entries(manual)
  assert len(expected) == 60
  assert dataset.splits == {"train": 54, "dev": 3, "test": 3}
  texts = {s: [r["targets"] for r in dataset.texts(s)] for s in dataset.splits}
  assert sorted(sum(texts.values(), [])) == sorted(expected)  # disjoint and complete
  for split, records in texts.items():
    assert records == [t for t in expected if t in set(records)]  # file order kept
  for r in dataset.texts("train"):
    assert r["inputs"] == "" and r["references"] == [r["targets"]]
  seven = next(t for t in sum(texts.values(), []) if t.startswith("Fortune 7:"))
  assert seven == _entry(7).strip() and seven.count("\n") == 3  # internal newlines kept
  meta = dataset.metadata
  assert meta["split_seed"] == fortunes.SPLIT_SEED == 2026
  assert meta["entries_in_files"] == 25 + 26 + 15 and meta["unique_entries"] == 60
  assert sorted(meta["sources"]) == ["alpha", "beta", "gamma"]
  for name, info in meta["sources"].items():
    with open(os.path.join(manual, name), "rb") as f:
      assert info["sha256"] == hashlib.sha256(f.read()).hexdigest()
  entries = {n: i["entries"] for n, i in meta["sources"].items()}
  assert entries == {"alpha": 25, "beta": 26, "gamma": 15}
  assert meta["characters"] == {s: sum(map(len, t)) for s, t in texts.items()}


def test_deterministic_and_vocabulary_covers_train(built, tmp_path):
  dataset, manual, _ = built
  again = registry.get_dataset("fortunes", data_dir=str(tmp_path), manual_dir=manual)
  for split in ("train", "dev", "test"):
    assert again.texts(split) == dataset.texts(split)
  train_chars = {c for r in dataset.texts("train") for c in r["targets"]}
  assert set(dataset.target_vocab.symbols) == train_chars and "\n" in train_chars
  assert dataset.input_vocab.symbols == []


def test_chars_tokenizer_is_built_from_train_and_cached(built):
  dataset, manual, root = built
  chars = registry.get_dataset("fortunes", data_dir=str(root / "data"), manual_dir=manual,
                               tokenizer="chars")
  path = dataset.builder.data_path / "chars_targets.json"
  assert path.exists() and (dataset.builder.data_path / "chars_inputs.json").exists()
  train_chars = {c for r in dataset.texts("train") for c in r["targets"]}
  assert chars.target_vocab.symbols == sorted(train_chars)
  assert SymbolVocabulary.load(path).symbols == chars.target_vocab.symbols


def test_missing_source_is_a_clear_error_and_builds_nothing(tmp_path):
  data_dir = tmp_path / "data"
  only_index = tmp_path / "only_index"
  only_index.mkdir()
  (only_index / "x.dat").write_bytes(b"\x00")
  for manual in (tmp_path / "missing", only_index):
    with pytest.raises(MissingDataError,
                       match=r"apt-get install fortunes.*manual_dir.*tiny_shakespeare"):
      registry.get_dataset("fortunes", data_dir=str(data_dir), manual_dir=str(manual))
  assert not data_dir.exists()
  with pytest.raises(MissingDataError,
                     match="tiny_shakespeare is not prepared.*tfds build tiny_shakespeare"):
    registry.get_dataset("tiny_shakespeare", data_dir=str(data_dir))
  assert not data_dir.exists()


def _prepare_fake_tiny_shakespeare(data_dir: str, text: str) -> None:
  """TFDS's own tiny_shakespeare builder, fed local text instead of its download."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.datasets.tiny_shakespeare import tiny_shakespeare_dataset_builder as ts

  class Local(ts.Builder, skip_registration=True):
    name = "tiny_shakespeare"
    pkg_dir_path = epath.Path(ts.__file__).parent

    def _split_generators(self, dl_manager):
      parts = {"train": text[:300], "validation": text[300:400], "test": text[400:]}
      return {k: self._generate_examples(k, v) for k, v in parts.items()}

  Local(data_dir=data_dir, file_format="array_record").download_and_prepare(
      file_format="array_record")


def test_tiny_shakespeare_opens_with_a_chars_vocabulary(tmp_path):
  text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak.\n" * 6
  _prepare_fake_tiny_shakespeare(str(tmp_path), text)
  dataset = registry.get_dataset("tiny_shakespeare", data_dir=str(tmp_path))
  assert dataset.splits == {"train": 1, "dev": 1, "test": 1}
  assert [r["targets"] for r in dataset.texts("dev")] == [text[300:400]]  # validation -> dev
  assert dataset.target_vocab.symbols == sorted(set(text[:300]))
  assert (dataset.builder.data_path / "chars_targets.json").exists()
  assert lm_pipeline.stream_length(dataset, "test") == len(text) - 400 + 1


def test_eval_windows_reassemble_the_stream(built):
  dataset, _, _ = built
  stream = _reference_stream(dataset, "train")
  n = -(-(len(stream) - 1) // SEQ)
  assert lm_pipeline.stream_length(dataset, "train") == len(stream)
  assert lm_pipeline.num_windows(dataset, "train", SEQ) == n
  batches = list(lm_pipeline.make_lm_pipeline(dataset, "train", batch_size=7, seq_len=SEQ,
                                              train=False, **ONE))
  assert len(batches) == -(-n // 7)
  inputs, targets, index = [], [], []
  for b in batches:
    assert b["inputs"].shape == b["targets"].shape == (7, SEQ)
    assert b["inputs"].dtype == b["targets"].dtype == b["target_lengths"].dtype == np.int32
    assert b["weights"].dtype == np.float32 and b["index"].dtype == np.int32
    for r in range(7):
      k = b["target_lengths"][r]
      real = b["index"][r] >= 0
      assert b["weights"][r] == float(real) and (k > 0) == real
      if real:  # targets are the inputs shifted by one
        np.testing.assert_array_equal(b["inputs"][r, 1:k], b["targets"][r, :k - 1])
      assert not b["inputs"][r, k:].any() and not b["targets"][r, k:].any()
      inputs += b["inputs"][r, :k].tolist()
      targets += b["targets"][r, :k].tolist()
      index += [int(b["index"][r])] if real else []
  assert index == list(range(n))
  assert inputs == stream[:-1] and targets == stream[1:]
  assert batches[-1]["target_lengths"][(n - 1) % 7] == (len(stream) - 1) - (n - 1) * SEQ
  assert (batches[-1]["index"][n % 7 or 7:] == -1).all()  # padding rows after the last window


def _window(stream, i):
  chunk = stream[i * SEQ:i * SEQ + SEQ + 1]
  return chunk[:-1], chunk[1:]


def test_train_shuffles_each_epoch_and_rows_are_windows(built):
  dataset, _, _ = built
  stream = _reference_stream(dataset, "train")
  n = lm_pipeline.num_windows(dataset, "train", SEQ)
  make = lambda seed: iter(lm_pipeline.make_lm_pipeline(dataset, "train", batch_size=8, seq_len=SEQ,
                                                        seed=seed, **ONE))
  per_epoch = n // 8
  batches = _take(make(0), 2 * per_epoch + 2)
  first = np.concatenate([b["index"] for b in batches[:per_epoch]])
  assert len(set(first.tolist())) == len(first) and first.tolist() != sorted(first.tolist())
  order = np.concatenate([b["index"] for b in batches]).tolist()
  assert order[:n] != order[n:2 * n] and sorted(order[n:2 * n]) == list(range(n))  # reshuffled
  for b in batches:
    np.testing.assert_array_equal(b["weights"], 1.0)
    for r, i in enumerate(b["index"]):
      x, y = _window(stream, i)
      assert b["inputs"][r, :len(y)].tolist() == x[:len(y)]
      assert b["targets"][r, :len(y)].tolist() == y
  assert all(_same(a, b) for a, b in zip(batches[:3], _take(make(0), 3)))
  assert not _same(batches[0], next(make(1)))


def test_exact_resume(built):
  dataset, _, _ = built
  make = lambda: iter(lm_pipeline.make_lm_pipeline(dataset, "train", batch_size=4, seq_len=SEQ,
                                                   seed=3, process_index=0, process_count=1))
  it = make()
  _take(it, 5)
  state = it.get_state()
  expected = _take(it, 3)
  resumed = make()
  resumed.set_state(state)
  assert all(_same(a, b) for a, b in zip(expected, _take(resumed, 3)))


@pytest.mark.parametrize("split", ["train", "dev"])
def test_two_processes_concatenate_to_one(built, split):
  dataset, _, _ = built
  make = lambda size, p, count: lm_pipeline.make_lm_pipeline(
      dataset, split, batch_size=size, seq_len=SEQ, seed=5, process_index=p, process_count=count,
      num_threads=0)
  whole = _take(iter(make(6, 0, 1)), 4) if split == "train" else list(make(6, 0, 1))
  parts = [iter(make(3, p, 2)) for p in range(2)]
  for batch in whole:
    halves = [next(p) for p in parts]
    assert all(np.array_equal(batch[k], np.concatenate([h[k] for h in halves])) for k in batch)
  if split == "dev":  # the same number of eval batches on every process
    assert [next(p, None) for p in parts] == [None, None]


def test_indices_select_those_windows(built):
  dataset, _, _ = built
  stream = _reference_stream(dataset, "dev")
  n = lm_pipeline.num_windows(dataset, "dev", SEQ)
  chosen = [n - 1, 0, 3, 3, 1]
  batches = list(lm_pipeline.make_lm_pipeline(dataset, "dev", batch_size=2, seq_len=SEQ,
                                              indices=chosen, **ONE))
  index = np.concatenate([b["index"] for b in batches]).tolist()
  assert index == chosen + [-1]
  b = batches[0]
  x, y = _window(stream, n - 1)
  assert b["target_lengths"][0] == len(y) and b["targets"][0, :len(y)].tolist() == y
  assert b["inputs"][0, :len(y)].tolist() == x[:len(y)]
  with pytest.raises(DataError, match="out of range"):
    lm_pipeline.make_lm_pipeline(dataset, "dev", batch_size=2, seq_len=SEQ, indices=[n], **ONE)


def test_too_small_for_one_training_batch(built):
  dataset, _, _ = built
  n = lm_pipeline.num_windows(dataset, "dev", SEQ)
  with pytest.raises(DataError, match=f"dev has {n} windows.*global batch of {2 * n + 2}"):
    lm_pipeline.make_lm_pipeline(dataset, "dev", batch_size=n + 1, seq_len=SEQ, train=True,
                                 process_index=0, process_count=2)
