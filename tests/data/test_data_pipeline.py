"""grain pipeline: batch contents, buckets, seeds, epochs, shards, state save/restore."""
import numpy as np
import pytest

from attention_jax.data import pipeline
from attention_jax.data.vocab import BOS_ID, EOS_ID

ONE_PROCESS = {"process_index": 0, "process_count": 1}


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _same(a, b):
  return all(a[k].shape == b[k].shape and np.array_equal(a[k], b[k]) for k in a)


def test_batch_contents_match_records(tiny_algorithmic):
  dataset = tiny_algorithmic("addition")
  texts = dataset.texts("train")
  batches = _take(iter(pipeline.make_pipeline(dataset, "train", batch_size=16, **ONE_PROCESS)), 5)
  for batch in batches:
    assert set(batch) == {"inputs", "input_lengths", "targets", "decoder_inputs",
                          "target_lengths", "weights", "index"}
    assert batch["inputs"].dtype == np.int32 and batch["weights"].dtype == np.float32
    np.testing.assert_array_equal(batch["weights"], 1.0)
    for row in range(16):
      record = texts[batch["index"][row]]
      n_in, n_out = batch["input_lengths"][row], batch["target_lengths"][row]
      x, y, d = batch["inputs"][row], batch["targets"][row], batch["decoder_inputs"][row]
      assert dataset.input_vocab.decode(x) == record["inputs"]
      assert dataset.target_vocab.decode(y) == record["targets"]
      assert n_in == len(record["inputs"]) + 1 and x[n_in - 1] == EOS_ID and not x[n_in:].any()
      assert n_out == len(record["targets"]) + 1 and y[n_out - 1] == EOS_ID and not y[n_out:].any()
      # Teacher forcing: decoder inputs are BOS then the targets shifted right by one.
      assert d[0] == BOS_ID
      np.testing.assert_array_equal(d[1:n_out], y[:n_out - 1])
      assert not d[n_out:].any()


def test_shapes_come_from_a_few_buckets(tiny_algorithmic):
  dataset = tiny_algorithmic("copy")
  assert pipeline.default_buckets(7) == (8,)
  assert pipeline.default_buckets(29) == (8, 16, 32)
  assert pipeline.default_buckets(296) == (8, 16, 32, 64, 128, 256, 296)
  it = iter(pipeline.make_pipeline(dataset, "train", batch_size=4, **ONE_PROCESS))
  shapes = {(b["inputs"].shape, b["targets"].shape) for b in _take(it, 60)}
  assert shapes == {((4, 8), (4, 8))}  # train lengths 1-6, +EOS: everything fits 8
  test = list(pipeline.make_pipeline(dataset, "test", batch_size=4, **ONE_PROCESS))
  # Test lengths 7-12 (+EOS): buckets (8, 16); a batch takes the smallest that fits.
  assert {b["inputs"].shape[1] for b in test} <= {8, 16}
  for b in test:
    assert b["inputs"].shape[1] == (8 if b["input_lengths"].max() <= 8 else 16)


def test_same_seed_same_batches_different_seed_different(tiny_algorithmic):
  dataset = tiny_algorithmic("sort")
  make = lambda seed: iter(pipeline.make_pipeline(dataset, "train", batch_size=8, seed=seed,
                                                  **ONE_PROCESS))
  a, b, c = _take(make(0), 6), _take(make(0), 6), _take(make(1), 6)
  assert all(_same(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x["index"], y["index"]) for x, y in zip(a, c))


def test_state_save_and_restore_continues_exactly(tiny_algorithmic):
  dataset = tiny_algorithmic("reverse")
  ds = pipeline.make_pipeline(dataset, "train", batch_size=8, seed=3, sort_window=3, **ONE_PROCESS)
  it = iter(ds)
  _take(it, 40)  # past the first epoch (240 / 8 = 30 batches)
  state = it.get_state()
  expected = _take(it, 10)
  resumed = iter(ds)
  resumed.set_state(state)
  assert all(_same(x, y) for x, y in zip(_take(resumed, 10), expected))


def test_epochs_cover_every_record_once_and_reshuffle(tiny_algorithmic):
  dataset = tiny_algorithmic("copy")
  batches = list(pipeline.make_pipeline(dataset, "train", batch_size=8, num_epochs=2,
                                        **ONE_PROCESS))
  assert len(batches) == 60 == 2 * pipeline.steps_per_epoch(dataset, "train", 8, process_count=1)
  first = np.concatenate([b["index"] for b in batches[:30]])
  second = np.concatenate([b["index"] for b in batches[30:]])
  assert sorted(first) == sorted(second) == list(range(240))
  assert not np.array_equal(first, second)


def test_sort_window_groups_similar_lengths(tiny_algorithmic):
  dataset = tiny_algorithmic("copy")
  sorted_batches = _take(iter(pipeline.make_pipeline(
      dataset, "train", batch_size=8, sort_window=10, num_epochs=1, **ONE_PROCESS)), 30)
  plain_batches = _take(iter(pipeline.make_pipeline(
      dataset, "train", batch_size=8, num_epochs=1, **ONE_PROCESS)), 30)
  spread = lambda bs: np.mean([np.ptp(b["input_lengths"]) for b in bs])
  assert spread(sorted_batches) < 0.5 * spread(plain_batches)
  indices = np.concatenate([b["index"] for b in sorted_batches])
  assert sorted(indices) == list(range(240))  # still exactly one epoch


@pytest.mark.parametrize("split,kwargs", [("dev", {}), ("train", {"num_epochs": 1}),
                                          ("train", {"num_epochs": 1, "sort_window": 3})])
def test_processes_split_the_one_process_batches_into_blocks(tiny_algorithmic, split, kwargs):
  dataset = tiny_algorithmic("copy")
  whole = list(pipeline.make_pipeline(dataset, split, batch_size=12, **ONE_PROCESS, **kwargs))
  parts = [list(pipeline.make_pipeline(dataset, split, batch_size=4, process_index=p,
                                       process_count=3, **kwargs)) for p in range(3)]
  assert all(len(p) == len(whole) for p in parts)  # the same step count on every process
  for i, batch in enumerate(whole):
    for key, value in batch.items():  # one padded shape, and the global batch in blocks
      np.testing.assert_array_equal(np.concatenate([p[i][key] for p in parts]), value)
  idx = np.concatenate([b["index"] for b in whole])
  assert sorted(idx[idx >= 0].tolist()) == list(range(40 if split == "dev" else 240))


def test_eval_is_one_ordered_pass_with_padding_rows(tiny_algorithmic):
  dataset = tiny_algorithmic("sort")
  batches = list(pipeline.make_pipeline(dataset, "test", batch_size=16, **ONE_PROCESS))
  assert len(batches) == 3 and all(b["inputs"].shape[0] == 16 for b in batches)
  idx = np.concatenate([b["index"] for b in batches])
  np.testing.assert_array_equal(idx, list(range(40)) + [-1] * 8)
  weights = np.concatenate([b["weights"] for b in batches])
  np.testing.assert_array_equal(weights, [1.0] * 40 + [0.0] * 8)
  assert not batches[-1]["inputs"][8:].any() and not batches[-1]["input_lengths"][8:].any()


def test_too_long_rows_dropped_in_training_and_rejected_in_eval(tiny_algorithmic):
  dataset = tiny_algorithmic("copy")
  batches = list(pipeline.make_pipeline(dataset, "train", batch_size=8, num_epochs=1,
                                        max_input_length=3, max_target_length=3, **ONE_PROCESS))
  for b in batches:
    assert b["inputs"].shape[1] == 8  # buckets for max length 3 + EOS
    keep = b["weights"] > 0
    assert (b["input_lengths"][keep] <= 4).all() and (b["index"][~keep] == -1).all()
  kept = sum(int(b["weights"].sum()) for b in batches)
  short = sum(len(r["inputs"]) <= 3 for r in dataset.texts("train"))
  assert kept == short
  with pytest.raises(Exception, match="raise max_input_length"):
    list(pipeline.make_pipeline(dataset, "test", batch_size=8, max_input_length=3, **ONE_PROCESS))


def test_cmudict_batches(cmudict_stress):
  it = iter(pipeline.make_pipeline(cmudict_stress, "train", batch_size=64, seed=0, **ONE_PROCESS))
  batches = _take(it, 20)
  shapes = {(b["inputs"].shape[1], b["targets"].shape[1]) for b in batches}
  assert shapes <= {(s, t) for s in (8, 16, 32) for t in (8, 16, 32)}
  b = batches[0]
  # Only these rows: reading the whole train split takes ~10 s.
  records = cmudict_stress.source("train").getitems(b["index"][:8].tolist())
  for row, record in enumerate(records):
    assert cmudict_stress.input_vocab.decode(b["inputs"][row]) == record["inputs"]
    assert cmudict_stress.target_vocab.decode(b["targets"][row]) == record["targets"]
