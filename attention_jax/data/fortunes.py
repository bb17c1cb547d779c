"""`fortunes`: a character-level language-modelling corpus from Debian's fortune cookies.

Source: the plain-text files of Debian's `fortunes` package (`apt-get install
fortunes` puts them in `/usr/share/games/fortunes/`: `fortunes`, `literature`,
`riddles`, ...), or any directory of such files passed as the manual dir
(`data.manual_dir`, `prepare --manual_dir`). Each file holds entries separated
by lines that are a single `%`. The `.dat` files (strfile's indexes), the
`.u8` names (symlinks to the same files) and every other symlink are skipped.

A record is one fortune: `inputs` "", `targets` the entry with surrounding
whitespace stripped (internal newlines, tabs and the backspace overstrikes of
old fortunes kept verbatim), `references` [targets]. Empty entries are skipped
and exact duplicates kept once (the first in sorted-file, file order). The
split is by FORTUNE with seed `SPLIT_SEED`: 5% test, 5% dev, the rest train,
each split in that same file order, so the text stream of a split reads like
the files. The metadata holds the seed and each source file's SHA-256 and
entry count.
"""
import os

import tensorflow_datasets as tfds

from attention_jax.data.errors import DataFormatError, MissingDataError
from attention_jax.data.splits import split_keys
from attention_jax.data.text_builder import (Row, TextToTextBuilder, file_sha256,
                                             manual_dir_or_none)

SPLIT_SEED = 2026
DEV_FRACTION = 0.05
TEST_FRACTION = 0.05
DEFAULT_DIR = "/usr/share/games/fortunes"
SKIPPED_SUFFIXES = (".dat", ".u8")
INSTALL_HINT = (
    "Install Debian's fortune files with `apt-get install fortunes` (they go to "
    f"{DEFAULT_DIR}), or pass a directory of text files whose entries are separated by "
    "lines holding a single `%` as data.manual_dir; on a machine with a network, "
    "TFDS's `tiny_shakespeare` is the other character-level corpus.")


def fortune_files(directory: str | os.PathLike) -> list[str]:
  """The fortune files of a directory, sorted: regular files less indexes, symlinks, dotfiles."""
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    return []
  found = []
  for name in sorted(os.listdir(directory)):
    path = os.path.join(directory, name)
    if (name.startswith(".") or name.endswith(SKIPPED_SUFFIXES) or os.path.islink(path)
        or not os.path.isfile(path)):
      continue
    found.append(path)
  return found


def parse_fortune_file(path: str | os.PathLike) -> list[str]:
  """The non-empty entries of one `%`-separated file, stripped, in file order."""
  try:
    with open(path, encoding="utf-8") as f:  # universal newlines: CRLF files read the same
      lines = f.readlines()
  except UnicodeDecodeError as e:
    raise DataFormatError(path, 0, f"not UTF-8 text ({e.reason} at byte {e.start})") from None
  entries, current = [], []
  for line in lines + ["%\n"]:  # a final separator closes the last entry
    if line.rstrip("\n") == "%":
      text = "".join(current).strip()
      if text:
        entries.append(text)
      current = []
    else:
      current.append(line)
  return entries


def find_fortune_files(manual_dir=None, search_default: bool = True) -> list[str]:
  """The fortune files of `manual_dir`, else of /usr/share/games/fortunes.

  The first directory holding any wins. Raises MissingDataError naming the
  directories searched and how to get the files.
  """
  directories = [os.fspath(manual_dir)] if manual_dir is not None else []
  if search_default or not directories:
    directories.append(DEFAULT_DIR)
  for directory in directories:
    files = fortune_files(directory)
    if files:
      return files
  raise MissingDataError(f"No fortune files (text files of entries separated by `%` lines) in "
                         f"{' or '.join(directories)}. {INSTALL_HINT}")


def split_sizes(n: int) -> dict[str, int | None]:
  """`split_keys` sizes: test and dev 5% each (at least one fortune), the rest train."""
  return {"test": max(1, round(TEST_FRACTION * n)), "dev": max(1, round(DEV_FRACTION * n)),
          "train": None}


class Fortunes(TextToTextBuilder):
  """Debian fortune cookies, one record per fortune (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTALL_HINT
  DESCRIPTION = __doc__
  HOMEPAGE = "https://packages.debian.org/fortunes"

  def _make_splits(self, dl_manager):
    files = find_fortune_files(manual_dir_or_none(dl_manager))
    per_file = {path: parse_fortune_file(path) for path in files}
    # dict keeps the first occurrence of each text, in sorted-file, file order.
    texts = list(dict.fromkeys(t for entries in per_file.values() for t in entries))
    if len(texts) < 3:
      raise DataFormatError(os.path.dirname(files[0]), 0,
                            f"only {len(texts)} distinct fortunes; need at least 3")
    # Positions in file order are the keys: the split is a function of the
    # files and the seed, and each split keeps the file order.
    parts = split_keys(range(len(texts)), split_sizes(len(texts)), SPLIT_SEED)
    splits = {name: [Row("", texts[i], [texts[i]]) for i in parts[name]]
              for name in ("train", "dev", "test")}
    extra = {
        "source_dir": os.path.dirname(files[0]), "split_seed": SPLIT_SEED,
        "sources": {os.path.basename(p): {"sha256": file_sha256(p), "entries": len(e)}
                    for p, e in per_file.items()},
        "entries_in_files": sum(len(e) for e in per_file.values()),
        "unique_entries": len(texts),
        "characters": {name: sum(len(r.targets) for r in rows) for name, rows in splits.items()},
    }
    return splits, extra
