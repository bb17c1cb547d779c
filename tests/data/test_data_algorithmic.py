"""algorithmic: targets checked by plain Python, length ranges, sizes, determinism."""
import pytest

from attention_jax.data import algorithmic


def _records(dataset, split):
  return [(r["inputs"], r["targets"]) for r in dataset.texts(split)]


@pytest.mark.parametrize("task", algorithmic.TASKS)
def test_sizes_and_length_ranges(tiny_algorithmic, task):
  dataset = tiny_algorithmic(task)
  assert dataset.splits == {"train": 240, "dev": 40, "test": 40}
  for split, (lo, hi) in (("train", (1, 6)), ("dev", (1, 6)), ("test", (7, 12))):
    for inputs, _ in _records(dataset, split):
      # For addition the length is the digit count of the longer operand.
      length = max(len(x) for x in inputs.split("+")) if task == "addition" else len(inputs)
      assert lo <= length <= hi, (split, inputs)
  lengths = {len(x) for x, _ in _records(dataset, "train")} if task != "addition" else None
  if lengths is not None:
    assert lengths == set(range(1, 7))  # the whole range is used


def test_copy_reverse_sort_targets(tiny_algorithmic):
  for split in ("train", "dev", "test"):
    for x, y in _records(tiny_algorithmic("copy"), split):
      assert y == x and x.isdigit()
    for x, y in _records(tiny_algorithmic("reverse"), split):
      assert y[::-1] == x and y == "".join(reversed(x))
    for x, y in _records(tiny_algorithmic("sort"), split):
      assert y == "".join(sorted(x)) and sorted(y) == sorted(x)
      assert all(a <= b for a, b in zip(y, y[1:]))


def test_addition_targets_by_int_arithmetic(tiny_algorithmic):
  dataset = tiny_algorithmic("addition")
  for split in ("train", "dev", "test"):
    for x, y in _records(dataset, split):
      a, b = x.split("+")
      assert int(y) == int(a) + int(b)
      # No leading zeros, so the strings are the canonical numerals.
      assert a == str(int(a)) and b == str(int(b)) and y == str(int(y))
  assert dataset.input_vocab.symbols == ["+"] + [str(d) for d in range(10)]


def test_generation_is_deterministic_in_the_seed():
  config = algorithmic.make_config("reverse", sizes=(("train", 50), ("dev", 5), ("test", 5)))
  again = algorithmic.make_config("reverse", sizes=(("train", 50), ("dev", 5), ("test", 5)))
  other = algorithmic.make_config("reverse", sizes=(("train", 50), ("dev", 5), ("test", 5)), seed=1)
  first = algorithmic.generate_split(config, "train")
  assert first == algorithmic.generate_split(again, "train")
  assert first != algorithmic.generate_split(other, "train")
  assert algorithmic.generate_split(config, "dev") != first[:5]  # splits use their own streams


def test_unknown_task():
  with pytest.raises(ValueError, match="Unknown algorithmic task 'mul'.*copy, reverse, sort, addition"):
    algorithmic.make_config("mul")
