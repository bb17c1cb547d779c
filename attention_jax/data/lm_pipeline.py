"""A packing grain pipeline for decoder-only language models.

The split's records are tokenised (`dataset.target_vocab.encode(targets)`),
each followed by EOS, and concatenated in record order into one int32 stream
(built once and cached on the dataset object). Window i is
stream[i*S : i*S + S + 1] for S = seq_len: its first S ids are the inputs, the
last S (the same, shifted by one) the targets. There are
ceil((len(stream) - 1) / S) windows; the last may be short and is 0-padded.

Each batch is a dict of NumPy arrays ([B] = batch_size):

  inputs          int32 [B, S]  stream ids; PAD (0) past target_lengths
  targets         int32 [B, S]  the next id at each position; PAD past target_lengths
  target_lengths  int32 [B]     real target positions of the row (0 for padding rows)
  weights         float32 [B]   1 for real rows, 0 for padding rows
  index           int32 [B]     window index (-1 for padding rows)

Training (`train=True`, the default for the train split): windows shuffled with
a seed derived from `seed`, reshuffled each epoch, repeated forever, partial
batches dropped. Evaluation: one pass in window order, the last batch filled
with padding rows. `indices` restricts either to those windows, in that order.

Several processes, as in `pipeline.py`: every process forms the same global
batch of batch_size * process_count rows and keeps its own consecutive block
of batch_size rows, so the iterator state (`get_state()` / `set_state()`, exact
resume) is the same on all of them.
"""
from typing import Sequence

import grain
import numpy as np

from attention_jax.data.errors import DataError
from attention_jax.data.pipeline import derive_seed, process_shard
from attention_jax.data.vocab import EOS_ID, PAD_ID

_CACHE_ATTR = "_lm_streams"  # split -> stream, on the dataset object


def token_stream(dataset, split: str) -> np.ndarray:
  """The split's target ids, each record followed by EOS, as one int32 array (cached)."""
  cache = dataset.__dict__.setdefault(_CACHE_ATTR, {})
  if split not in cache:
    encode = dataset.target_vocab.encode
    ids = [i for record in dataset.texts(split) for i in encode(record["targets"]) + [EOS_ID]]
    cache[split] = np.asarray(ids, np.int32)
  return cache[split]


def stream_length(dataset, split: str) -> int:
  """Ids in the split's stream, one EOS per record included."""
  return len(token_stream(dataset, split))


def num_windows(dataset, split: str, seq_len: int) -> int:
  """Windows of `seq_len` predicted positions that cover the split's stream."""
  return _num_windows(stream_length(dataset, split), seq_len)


def _num_windows(length: int, seq_len: int) -> int:
  if seq_len < 1:
    raise ValueError(f"seq_len must be positive, got {seq_len}.")
  return -(-max(length - 1, 0) // seq_len)


class _Windows:
  """Random access to windows `window_ids[p]` of a stream: (window index, start, length)."""

  def __init__(self, stream: np.ndarray, seq_len: int, window_ids: np.ndarray):
    self._stream = stream
    self._seq_len = seq_len
    self._ids = window_ids

  def __len__(self) -> int:
    return len(self._ids)

  def __getitem__(self, position: int) -> int:
    # Repeat/shuffle downstream ask for position + epoch * len.
    return int(self._ids[position % len(self._ids)])

  def row(self, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) of one window, unpadded: as many inputs as predicted targets."""
    start = window * self._seq_len
    n = min(self._seq_len, len(self._stream) - 1 - start)
    return self._stream[start:start + n], self._stream[start + 1:start + 1 + n]


class _Batches(grain.MapDataset):
  """Batch i = window positions [i*G, (i+1)*G) of the parent, padded; then rows `keep`.

  Positions past the end of the parent (eval's last batch) become padding rows.
  """

  def __init__(self, parent: grain.MapDataset, windows: _Windows, *, global_batch: int,
               num_batches: int, seq_len: int, keep: slice):
    super().__init__(parent)
    self._windows = windows
    self._global_batch = global_batch
    self._num_batches = num_batches
    self._seq_len = seq_len
    self._keep = keep

  def __len__(self) -> int:
    return self._num_batches

  def __str__(self) -> str:
    return f"_Batches(global_batch={self._global_batch}, seq_len={self._seq_len})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    index %= self._num_batches
    start = index * self._global_batch
    # Only this process's rows are read: every process agrees on which they are.
    positions = range(start, start + self._global_batch)[self._keep]
    return self._pad([self._parent[p] if p < len(self._parent) else None for p in positions])

  def _pad(self, window_ids: list) -> dict:
    b, s = len(window_ids), self._seq_len
    batch = {"inputs": np.full((b, s), PAD_ID, np.int32),
             "targets": np.full((b, s), PAD_ID, np.int32),
             "target_lengths": np.zeros((b,), np.int32),
             "weights": np.zeros((b,), np.float32),
             "index": np.full((b,), -1, np.int32)}
    for r, window in enumerate(window_ids):
      if window is None:
        continue
      x, y = self._windows.row(window)
      batch["inputs"][r, :len(x)] = x
      batch["targets"][r, :len(y)] = y
      batch["target_lengths"][r] = len(y)
      batch["weights"][r] = 1.0
      batch["index"][r] = window
    return batch


def _window_ids(total: int, indices: Sequence[int] | None) -> np.ndarray:
  if indices is None:
    return np.arange(total, dtype=np.int64)
  ids = np.asarray(list(indices), np.int64).reshape(-1)
  bad = ids[(ids < 0) | (ids >= total)]
  if bad.size:
    raise DataError(f"Window indices {bad[:5].tolist()} out of range [0, {total}).")
  return ids


def make_lm_pipeline(dataset, split: str, *, batch_size: int, seq_len: int, seed: int = 0,
                     train: bool | None = None, indices: Sequence[int] | None = None,
                     process_index: int | None = None, process_count: int | None = None,
                     num_threads: int = 2, prefetch_batches: int = 8) -> grain.IterDataset:
  """A grain pipeline of packed LM batches (see the module docstring for the format).

  Args:
    dataset: a `registry.Dataset` (from `get_dataset`); its target vocabulary tokenises.
    split: "train", "dev" or "test".
    batch_size: rows per batch on this process (the global batch is
      batch_size * process_count).
    seq_len: predicted positions per row.
    seed: shuffling seed (train); the same seed gives the same batches.
    train: shuffle/repeat forever/drop remainder (default: split == "train").
    indices: only these window indices, in this order (e.g. a seeded sample to score).
    process_index / process_count: this process's block of each batch (default from jax).
    num_threads / prefetch_batches: grain read threads and buffered batches (0 threads: none).
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  train = (split == "train") if train is None else train
  shard, shards = process_shard(process_index, process_count)
  stream = token_stream(dataset, split)
  windows = _Windows(stream, seq_len, _window_ids(_num_windows(len(stream), seq_len), indices))
  global_batch = batch_size * shards
  ds = grain.MapDataset.source(windows)
  if train:
    if len(windows) < global_batch:
      raise DataError(f"{dataset.name}/{split} has {len(windows)} windows of {seq_len} tokens, "
                      f"fewer than one global batch of {global_batch}.")
    ds = ds.shuffle(seed=derive_seed(seed, 0)).repeat(None)
    num_batches = len(ds) // global_batch
  else:
    num_batches = -(-len(windows) // global_batch)
  batches = _Batches(ds, windows, global_batch=global_batch, num_batches=num_batches,
                     seq_len=seq_len, keep=slice(shard * batch_size, (shard + 1) * batch_size))
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
  return batches.to_iter_dataset(options)
