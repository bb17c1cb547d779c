"""`freedict_deu_eng`: German -> English example phrases and sentences from FreeDict.

The raw file is read from the builder's manual dir (`manual_dir=` of
`get_dataset` / `prepare --manual_dir`); when none is given, `/usr/share/dictd`
(where Debian's `dict-freedict-deu-eng` installs it) is tried. Two formats:

  * dictd, as shipped by the Debian package: `freedict-deu-eng.dict.dz`
    (dictzip, readable as gzip) or an uncompressed `.dict`; an example is an
    indented line `      "Du solltest mal ganz fix herkommen."  - You'd better get here pronto.`
  * TEI XML, as in FreeDict's source release (`deu-eng.tei`): an example is
    `<cit type="example"><quote>DE</quote><cit type="trans"><quote>EN</quote>...</cit></cit>`
    inside an entry's `<sense>`; several translations are joined with ", ",
    which is how the dictd rendering writes them.

Pairs are deduplicated and split by GERMAN phrase with seed `SPLIT_SEED` (5% dev,
5% test, rest train), so every translation of a phrase is on one side. Train
has one record per pair; dev and test one per German phrase, with `targets`
its first translation (sorted) and `references` all of them.
"""
import gzip
import os
import re
import xml.etree.ElementTree as ET
import zlib

import tensorflow_datasets as tfds

from attention_jax.data.errors import DataFormatError, MissingDataError, first_line
from attention_jax.data.splits import split_keys
from attention_jax.data.text_builder import (TextToTextBuilder, file_sha256, manual_dir_or_none,
                                             rows_by_split)

SPLIT_SEED = 2017
DEV_FRACTION = 0.05
TEST_FRACTION = 0.05
DEFAULT_DIR = "/usr/share/dictd"
FILE_PATTERNS = (".tei", ".dict.dz", ".dict")  # searched in this order
REPAIR_HINT = ("reinstall it (`apt-get install --reinstall dict-freedict-deu-eng`) or pass a "
               "directory with an intact file as manual_dir")
INSTALL_HINT = (
    "Install the FreeDict German-English dictionary with `apt-get install "
    "dict-freedict-deu-eng` (it puts freedict-deu-eng.dict.dz in /usr/share/dictd), "
    "or put FreeDict's deu-eng.tei (source release) in a directory and pass it as manual_dir.")

_EXAMPLE_LINE = re.compile(r'^ {6}"')  # how dictd indents an example
_EXAMPLE = re.compile(r'^ {6}"(?P<de>.+)"  - (?P<en>.+)$')


def _clean(text: str | None) -> str:
  return " ".join((text or "").split())


def parse_dictd(path: str | os.PathLike) -> list[tuple[str, str]]:
  """(German, English) example pairs of a dictd `.dict` / `.dict.dz` file, in file order."""
  opener = gzip.open if os.fspath(path).endswith(".dz") else open
  pairs, number = [], 0
  try:
    with opener(path, "rt", encoding="utf-8") as f:
      for number, line in enumerate(f, start=1):
        if not _EXAMPLE_LINE.match(line):
          continue
        match = _EXAMPLE.match(line.rstrip("\n"))
        if not match:
          raise DataFormatError(path, number,
                                f'expected `      "German"  - English`, got {line.strip()!r}')
        de, en = _clean(match["de"]), _clean(match["en"])
        if de and en:
          pairs.append((de, en))
  except (OSError, EOFError, UnicodeDecodeError, zlib.error) as e:  # not gzip, cut short, not UTF-8
    raise DataFormatError(path, number + 1,
                          f"unreadable ({first_line(e)}); {REPAIR_HINT}") from None
  return pairs


def _local(tag: str) -> str:
  return tag.rsplit("}", 1)[-1]


def parse_tei(path: str | os.PathLike) -> list[tuple[str, str]]:
  """(German, English) pairs from `cit[@type="example"]` elements of a FreeDict TEI file."""
  pairs = []
  try:
    for _, elem in ET.iterparse(os.fspath(path), events=("end",)):
      if _local(elem.tag) == "cit" and elem.get("type") == "example":
        de = next((_clean(q.text) for q in elem if _local(q.tag) == "quote"), "")
        translations = [_clean(q.text) for c in elem
                        if _local(c.tag) == "cit" and c.get("type") == "trans"
                        for q in c if _local(q.tag) == "quote"]
        en = ", ".join(t for t in translations if t)
        if de and en:
          pairs.append((de, en))
      elif _local(elem.tag) == "entry":
        elem.clear()  # keep memory flat on the 500k-entry file
  except ET.ParseError as e:
    raise DataFormatError(path, e.position[0], f"malformed XML: {e}; {REPAIR_HINT}") from None
  return pairs


def find_source_file(manual_dir=None, search_default: bool = True) -> str:
  """The first FreeDict deu-eng file in `manual_dir`, then in /usr/share/dictd.

  TEI is preferred over dictd within a directory. Raises MissingDataError
  naming the directories searched and how to install the file.
  """
  directories = [os.fspath(manual_dir)] if manual_dir is not None else []
  if search_default or not directories:
    directories.append(DEFAULT_DIR)
  for directory in directories:
    if not os.path.isdir(directory):
      continue
    names = sorted(os.listdir(directory))
    for suffix in FILE_PATTERNS:
      for name in names:
        if name.endswith(suffix) and "deu-eng" in name:
          return os.path.join(directory, name)
  raise MissingDataError(f"No FreeDict deu-eng file (*deu-eng*.tei, *.dict.dz or *.dict) in "
                         f"{' or '.join(directories)}. {INSTALL_HINT}")


class FreedictDeuEng(TextToTextBuilder):
  """FreeDict German -> English example pairs (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = INSTALL_HINT
  DESCRIPTION = __doc__
  HOMEPAGE = "https://freedict.org/"

  def _make_splits(self, dl_manager):
    path = find_source_file(manual_dir_or_none(dl_manager))
    pairs = parse_tei(path) if path.endswith(".tei") else parse_dictd(path)
    if not pairs:
      raise DataFormatError(path, 0, "no example pairs found")
    translations: dict[str, list[str]] = {}
    for de, en in sorted(set(pairs)):
      translations.setdefault(de, []).append(en)
    n = len(translations)
    n_dev, n_test = max(1, round(DEV_FRACTION * n)), max(1, round(TEST_FRACTION * n))
    if n < 3:
      raise DataFormatError(path, 0, f"only {n} distinct German phrases; need at least 3")
    phrases = split_keys(translations, {"test": n_test, "dev": n_dev, "train": None}, SPLIT_SEED)
    splits = rows_by_split(translations, phrases)
    digest = file_sha256(path)
    extra = {"source": os.path.basename(path), "source_sha256": digest, "split_seed": SPLIT_SEED,
             "pairs_in_file": len(pairs), "unique_pairs": len(set(pairs)),
             "phrases": {name: len(p) for name, p in phrases.items()}}
    return splits, extra
