"""grain input pipelines: shuffle, tokenise, batch and pad to a few fixed shapes.

`make_pipeline(dataset, split, batch_size=...)` returns a `grain.IterDataset`;
`iter()` of it is a `grain.DatasetIterator` whose `get_state()` / `set_state()`
save and restore the position (a small JSON-able dict), so a resumed run
continues with exactly the batches it would have seen.

Each batch is a dict of NumPy arrays ([B] = batch_size, S and T = bucket lengths):

  inputs          int32 [B, S]  input ids, then EOS (unless add_eos_to_inputs=False), 0-padded
  input_lengths   int32 [B]     number of non-pad input ids (0 for padding rows)
  targets         int32 [B, T]  target ids then EOS, 0-padded: what the decoder predicts
  decoder_inputs  int32 [B, T]  BOS then target ids (targets shifted right): teacher forcing
  target_lengths  int32 [B]     number of non-pad target ids, EOS included
  weights         float32 [B]   1 for real rows, 0 for padding rows (end of eval, too long)
  index           int32 [B]     record index in the split (-1 for padding rows); look up
                                `dataset.texts(split)[index]["references"]` to score outputs

S and T are the smallest of a few bucket lengths (8, 16, 32, ..., the split's
longest) that fit the batch, so jit compiles a handful of programs.

Feature inputs (a data set with `feature_dim`, spoken_digits): `inputs` is
float32 [B, S, feature_dim], the frames zero-padded, `input_lengths` the frame
counts and S a bucket of frames; such inputs take no EOS (add_eos_to_inputs=False).

Several processes: every process forms the same global batch of
batch_size * process_count rows, pads it to one bucket shape, and keeps its own
consecutive block of batch_size rows. So the global batch, and the training
run, do not depend on the number of processes, every process feeds arrays of
the same shape, and the iterator state is the same on all of them. (Each
process tokenises the whole global batch: cheap next to a train step.)

Training (`train=True`, the default for the train split): records shuffled
with a seed derived from `seed` and reshuffled each epoch; `num_epochs=None`
repeats forever; partial batches are dropped. Optionally (`sort_window=k`),
each window of k batches is sorted by length and its batches served in a
seeded random order, so rows in a batch have similar lengths.

Evaluation (`train=False`): one pass in record order; the last batches are
filled with padding rows (weights 0, index -1).
"""
import sys
import threading
from typing import Sequence

import grain
import numpy as np

from attention_jax.data.errors import DataError
from attention_jax.data.vocab import BOS_ID, EOS_ID, PAD_ID

MIN_BUCKET = 8


def default_buckets(max_length: int, smallest: int = MIN_BUCKET) -> tuple[int, ...]:
  """Powers of two from `smallest` below `max_length`, then `max_length` rounded up to 8."""
  top = -(-max(max_length, 1) // 8) * 8
  buckets = []
  b = smallest
  while b < top:
    buckets.append(b)
    b *= 2
  return tuple(buckets) + (top,)


def _bucket(length: int, buckets: Sequence[int]) -> int:
  for b in buckets:
    if length <= b:
      return b
  return buckets[-1]


def derive_seed(seed: int, purpose: int) -> int:
  """A 32-bit seed for one use of the user seed (grain adds the epoch to shuffle seeds,
  so seeds 0 and 1 must not be passed on as such)."""
  return int(np.random.SeedSequence([seed, purpose]).generate_state(1)[0])


class _Tokenize:
  """record -> {inputs, targets (ids with EOS), index}; picklable for grain."""

  def __init__(self, dataset, add_eos_to_inputs: bool, num_records: int, indices=None):
    self._dataset = dataset
    self._add_eos = add_eos_to_inputs
    self._num_records = num_records
    self._indices = indices  # position -> record index, for a subset of the split

  def __call__(self, index: int, record: dict) -> dict:
    # Downstream repeat/shuffle ask for index + epoch * num_records.
    index %= self._num_records
    if self._indices is not None:
      index = int(self._indices[index])
    inputs, targets = self._dataset.tokenize(record)
    if isinstance(inputs, np.ndarray) and inputs.ndim == 2:  # feature frames
      inputs = inputs.astype(np.float32, copy=False)
    else:
      if self._add_eos:
        inputs = inputs + [EOS_ID]
      inputs = np.asarray(inputs, np.int32)
    return {"inputs": inputs, "targets": np.asarray(targets + [EOS_ID], np.int32),
            "index": index}


class _PaddedBatches(grain.MapDataset):
  """Batch i = rows [i*B, (i+1)*B) of the parent (or of a length-sorted window), padded,
  then rows `keep` of it (this process's block).

  Positions past the end of the parent become padding rows.
  """

  def __init__(self, parent: grain.MapDataset, *, batch_size: int, num_batches: int,
               input_buckets: Sequence[int], target_buckets: Sequence[int],
               max_lengths: tuple[int, int], sort_window: int, seed: int, strict: bool,
               keep: slice = slice(None), feature_dim: int | None = None):
    super().__init__(parent)
    self._feature_dim = feature_dim  # None: int ids; else float frames of this size
    self._keep = keep
    self._max_lengths = max_lengths  # longest kept (inputs, targets), EOS included
    self._batch_size = batch_size
    self._num_batches = num_batches
    self._input_buckets = tuple(input_buckets)
    self._target_buckets = tuple(target_buckets)
    self._window = max(1, sort_window)
    self._seed = seed
    self._strict = strict  # eval: a too-long example is an error, not a dropped row
    self._lock = threading.Lock()
    self._cache: dict[int, list] = {}  # last windows read (threads ask for neighbours)

  def __len__(self) -> int:
    return self._num_batches

  def __str__(self) -> str:
    return f"_PaddedBatches(batch_size={self._batch_size}, sort_window={self._window})"

  def _rows(self, start: int, stop: int) -> list:
    n = len(self._parent)
    wanted = [p for p in range(start, stop) if p < n]
    # The batched read path: TFDS reads many records at once much faster.
    rows = list(self._parent._getitems(wanted))  # pylint: disable=protected-access
    return rows + [None] * (stop - start - len(wanted))

  def _window_rows(self, window: int) -> list:
    with self._lock:
      if window in self._cache:
        return self._cache[window]
    size = self._window * self._batch_size
    rows = self._rows(window * size, (window + 1) * size)
    order = sorted(range(len(rows)), key=lambda r: _sort_key(rows[r]))
    rows = [rows[r] for r in order]
    with self._lock:
      if len(self._cache) >= 4:
        self._cache.pop(min(self._cache))
      self._cache[window] = rows
    return rows

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    if index >= self._num_batches:
      index %= self._num_batches
    if self._window == 1:
      rows = self._rows(index * self._batch_size, (index + 1) * self._batch_size)
    else:
      window, slot = divmod(index, self._window)
      slots = min(self._window, self._num_batches - window * self._window)  # last may be short
      perm = np.random.default_rng([self._seed, window]).permutation(slots)
      start = int(perm[slot]) * self._batch_size
      rows = self._window_rows(window)[start:start + self._batch_size]
    return {k: v[self._keep] for k, v in self._pad(rows).items()}

  def _pad(self, rows: list) -> dict:
    max_in = min(self._max_lengths[0], self._input_buckets[-1])
    max_out = min(self._max_lengths[1], self._target_buckets[-1])
    kept = []
    for row in rows:
      if row is not None and (len(row["inputs"]) > max_in or len(row["targets"]) > max_out):
        if self._strict:
          raise DataError(
              f"Record {row['index']} has {len(row['inputs'])} input / {len(row['targets'])} "
              f"target ids (EOS included), more than the limits ({max_in}, {max_out}); "
              "raise max_input_length / max_target_length.")
        row = None  # dropped: becomes a padding row
      kept.append(row)
    real = [r for r in kept if r is not None]
    s = _bucket(max([len(r["inputs"]) for r in real] or [1]), self._input_buckets)
    t = _bucket(max([len(r["targets"]) for r in real] or [1]), self._target_buckets)
    b = len(kept)
    inputs = (np.full((b, s), PAD_ID, np.int32) if self._feature_dim is None
              else np.zeros((b, s, self._feature_dim), np.float32))
    batch = {"inputs": inputs,
             "input_lengths": np.zeros((b,), np.int32),
             "targets": np.full((b, t), PAD_ID, np.int32),
             "decoder_inputs": np.full((b, t), PAD_ID, np.int32),
             "target_lengths": np.zeros((b,), np.int32),
             "weights": np.zeros((b,), np.float32),
             "index": np.full((b,), -1, np.int32)}
    for i, row in enumerate(kept):
      if row is None:
        continue
      x, y = row["inputs"], row["targets"]
      batch["inputs"][i, :len(x)] = x
      batch["input_lengths"][i] = len(x)
      batch["targets"][i, :len(y)] = y
      batch["decoder_inputs"][i, 0] = BOS_ID
      batch["decoder_inputs"][i, 1:len(y)] = y[:-1]
      batch["target_lengths"][i] = len(y)
      batch["weights"][i] = 1.0
      batch["index"][i] = row["index"]
    return batch


class _Subset:
  """Records `indices` of a source, in that order, with its batched reads."""

  def __init__(self, source, indices: Sequence[int]):
    self._source, self._indices = source, [int(i) for i in indices]
    bad = [i for i in self._indices if not 0 <= i < len(source)]
    if bad:
      raise DataError(f"record indices {bad[:5]} are outside the split's {len(source)} records")

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, position: int):
    return self._source[self._indices[position]]

  def _getitems(self, positions: Sequence[int]) -> list:
    return self._source._getitems([self._indices[p] for p in positions])  # pylint: disable=protected-access


def _sort_key(row):
  return (sys.maxsize, 0) if row is None else (len(row["inputs"]), len(row["targets"]))


def process_shard(process_index, process_count) -> tuple[int, int]:
  """(this process's index, the process count), each from jax when None."""
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"Bad shard {process_index} of {process_count}.")
  return process_index, process_count


def make_pipeline(dataset, split: str, *, batch_size: int, seed: int = 0, train: bool | None = None,
                  num_epochs: int | None = None, max_input_length: int | None = None,
                  max_target_length: int | None = None, input_buckets: Sequence[int] | None = None,
                  target_buckets: Sequence[int] | None = None, sort_window: int = 0,
                  add_eos_to_inputs: bool = True, process_index: int | None = None,
                  process_count: int | None = None, num_threads: int = 2,
                  prefetch_batches: int = 8,
                  indices: Sequence[int] | None = None) -> grain.IterDataset:
  """A grain pipeline of padded batches (see the module docstring for the format).

  Args:
    dataset: a `registry.Dataset` (from `get_dataset`).
    split: "train", "dev" or "test".
    batch_size: rows per batch on this process (the global batch is
      batch_size * process_count).
    seed: shuffling seed; the same seed gives the same batches.
    train: shuffle/repeat/drop remainder (default: split == "train").
    num_epochs: training epochs; None repeats forever. Ignored for eval.
    max_input_length / max_target_length: longest kept sequence in tokens
      without BOS/EOS (default: the split's longest); longer train rows are
      dropped (weight 0), longer eval rows raise.
    input_buckets / target_buckets: padded lengths (EOS included); default
      `default_buckets` of the max lengths + 1.
    sort_window: batches per length-sorted window (0 or 1: no sorting); train only.
    add_eos_to_inputs: end every input with EOS (must be False for feature inputs).
    process_index / process_count: this process's block of each batch (default from jax).
    num_threads / prefetch_batches: grain read threads and buffered batches (0 threads: none).
    indices: only these records of the split, in this order (an evaluator's sample);
      `index` in the batches stays the record's index in the whole split.
  """
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}.")
  train = (split == "train") if train is None else train
  if max_input_length is None or max_target_length is None:
    # Scanning lengths is free for symbol vocabularies (stored stats), slow for huge splits.
    found_in, found_out = dataset.max_lengths(split)
    max_input_length = max_input_length or found_in
    max_target_length = max_target_length or found_out
  max_in = max_input_length + (1 if add_eos_to_inputs else 0)
  max_out = max_target_length + 1
  feature_dim = getattr(dataset, "feature_dim", None)
  if feature_dim and add_eos_to_inputs:
    raise DataError(f"{dataset.name} has feature inputs, which take no EOS; pass "
                    "add_eos_to_inputs=False.")
  input_buckets = tuple(input_buckets or default_buckets(max_in))
  target_buckets = tuple(target_buckets or default_buckets(max_out))
  shard, shards = process_shard(process_index, process_count)

  source = dataset.source(split)
  if indices is not None:
    source = _Subset(source, indices)
  ds = grain.MapDataset.source(source)
  ds = ds.map_with_index(_Tokenize(dataset, add_eos_to_inputs, len(source),
                                   None if indices is None else np.asarray(indices)))
  global_batch = batch_size * shards
  if train:
    if len(ds) < global_batch:
      raise DataError(f"{dataset.name}/{split} has {len(ds)} records, fewer than one global "
                      f"batch of {global_batch}.")
    ds = ds.shuffle(seed=derive_seed(seed, 0)).repeat(num_epochs)
    num_batches = len(ds) // global_batch
  else:
    num_batches = -(-len(source) // global_batch)
    sort_window = 0  # eval order stays the record order
  batches = _PaddedBatches(ds, batch_size=global_batch, num_batches=num_batches,
                           input_buckets=input_buckets, target_buckets=target_buckets,
                           max_lengths=(max_in, max_out), sort_window=sort_window,
                           seed=derive_seed(seed, 1), strict=not train,
                           keep=slice(shard * batch_size, (shard + 1) * batch_size),
                           feature_dim=feature_dim)
  options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=prefetch_batches)
  return batches.to_iter_dataset(options)


def steps_per_epoch(dataset, split: str, batch_size: int, process_count: int | None = None) -> int:
  """Full training batches per epoch (`batch_size` rows on each of the processes)."""
  _, shards = process_shard(0 if process_count else None, process_count)
  return dataset.splits[split] // (batch_size * shards)
