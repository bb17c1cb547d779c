"""Seeded splits of a set of keys (words, sentence pairs) into train / dev / test.

The split is a function of the SORTED unique keys and the seed only, so it does
not depend on the order of the raw file and every record sharing a key (all
pronunciations of a word) lands on the same side.
"""
from typing import Hashable, Iterable, Mapping

import numpy as np


def split_keys(keys: Iterable[Hashable], sizes: Mapping[str, int | None],
               seed: int) -> dict[str, list]:
  """Splits unique keys into named parts of given sizes.

  Args:
    keys: the keys (duplicates are merged); they must be sortable.
    sizes: ordered mapping split name -> number of keys; exactly one value may
      be None, meaning "all the keys left over". Parts are cut from a seeded
      permutation in the mapping's order.
    seed: seed of the permutation (numpy PCG64).

  Returns:
    split name -> sorted list of keys. The parts are disjoint and cover all keys.
  """
  unique = sorted(set(keys))
  fixed = sum(n for n in sizes.values() if n is not None)
  rest = [name for name, n in sizes.items() if n is None]
  if len(rest) > 1:
    raise ValueError(f"At most one split may take the rest, got {rest}.")
  if fixed > len(unique) or (not rest and fixed != len(unique)):
    raise ValueError(f"Split sizes {dict(sizes)} do not fit {len(unique)} keys.")
  order = np.random.default_rng(seed).permutation(len(unique))
  parts, start = {}, 0
  for name, n in sizes.items():
    n = len(unique) - fixed if n is None else n
    parts[name] = sorted(unique[i] for i in order[start:start + n])
    start += n
  return parts
