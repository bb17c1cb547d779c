"""`algorithmic`: copy, reverse, sort and addition, for length generalisation.

Every record is a pair of strings over a small character vocabulary:

  copy      "30841"   -> "30841"
  reverse   "30841"   -> "14803"
  sort      "30841"   -> "01348"      (symbols are the digits 0-9)
  addition  "123+45"  -> "168"        (operands without leading zeros)

A sequence length is drawn uniformly from the split's range (for addition, the
number of digits of the longer operand; the other has 1 to that many digits). dev uses the train
range; test uses a LONGER range, so test accuracy measures length
generalisation. Generation is a pure function of (config seed, split name).
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from attention_jax.data.text_builder import Row, TextToTextBuilder

TASKS = ("copy", "reverse", "sort", "addition")
_SPLIT_IDS = {"train": 0, "dev": 1, "test": 2}


@dataclasses.dataclass(eq=False)
class AlgorithmicConfig(tfds.core.BuilderConfig):
  task: str = "copy"                   # one of TASKS
  train_lengths: tuple = (1, 20)       # inclusive range of train and dev lengths
  test_lengths: tuple = (21, 40)       # inclusive, longer range for test
  sizes: tuple = (("train", 20_000), ("dev", 1_000), ("test", 1_000))  # records per split
  seed: int = 0                        # generation seed


def make_config(task: str, name: str | None = None, **kwargs) -> AlgorithmicConfig:
  """A config for `task`; give a new `name` whenever other fields change."""
  if task not in TASKS:
    raise ValueError(f"Unknown algorithmic task {task!r}; known: {', '.join(TASKS)}.")
  return AlgorithmicConfig(name=name or task, task=task,
                           description=f"{task}; see the module docstring.", **kwargs)


def _random_number(rng: np.random.Generator, digits: int) -> int:
  first = rng.integers(1 if digits > 1 else 0, 10)
  rest = rng.integers(0, 10, size=digits - 1)
  return int("".join(str(d) for d in [first, *rest]))


def make_example(task: str, rng: np.random.Generator, length: int) -> tuple[str, str]:
  """One (inputs, targets) pair of the given length (digits per operand for addition)."""
  if task == "addition":
    a = _random_number(rng, length)
    b = _random_number(rng, int(rng.integers(1, length + 1)) if length > 1 else 1)
    if rng.integers(2):  # either operand may be the longer one
      a, b = b, a
    return f"{a}+{b}", str(a + b)
  seq = "".join(str(d) for d in rng.integers(0, 10, size=length))
  if task == "copy":
    return seq, seq
  if task == "reverse":
    return seq, seq[::-1]
  if task == "sort":
    return seq, "".join(sorted(seq))
  raise ValueError(f"Unknown algorithmic task {task!r}; known: {', '.join(TASKS)}.")


def generate_split(config: AlgorithmicConfig, split: str) -> list[Row]:
  """The records of one split; deterministic in (config.seed, split)."""
  size = dict(config.sizes)[split]
  lo, hi = config.test_lengths if split == "test" else config.train_lengths
  if not 1 <= lo <= hi:
    raise ValueError(f"Bad length range {(lo, hi)} for split {split!r}.")
  rng = np.random.default_rng([config.seed, _SPLIT_IDS[split]])
  rows = []
  for _ in range(size):
    inputs, targets = make_example(config.task, rng, int(rng.integers(lo, hi + 1)))
    rows.append(Row(inputs, targets, [targets]))
  return rows


class Algorithmic(TextToTextBuilder):
  """Copy / reverse / sort / addition with a longer test length range."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [make_config(task) for task in TASKS]
  DESCRIPTION = __doc__

  def _make_splits(self, dl_manager):
    config = self.builder_config
    splits = {name: generate_split(config, name) for name, _ in config.sizes}
    extra = {"task": config.task, "seed": config.seed,
             "train_lengths": list(config.train_lengths),
             "test_lengths": list(config.test_lengths)}
    return splits, extra
