"""`cmudict_g2p/standard`: the CMUdict G2P split the neural G2P literature reports on.

Source: Phonetisaurus' `g014b2b.train` (106,837 words, 113,438 pronunciations) and
`g014b2b.ref` (12,000 test words with every reference pronunciation), shipped with this
package in `attention_jax/data/g014b2b/` (see its PROVENANCE.md). A `g014b2b.train` and
`g014b2b.ref` placed together in the builder's manual dir take precedence.

Line format: `WORD<TAB>PH PH ...`, more tab-separated pronunciations allowed (the ref file
lists all of a word's references on its line; the train file gives one per line and repeats
the word). Words are A-Z and apostrophes, phonemes the 39 ARPAbet ones without stress
digits. Records hold the words in lower case, like the other cmudict_g2p configs.

Splits: test is every ref word; dev is `dev_words` train words drawn with `SPLIT_SEED`
(the first of a seeded permutation of the sorted train words, `splits.split_keys`), since
Yao & Zweig's 2,670 dev words were never published; train is the other train words.
"""
import hashlib
import os
import re

from attention_jax.data.cmudict_g2p import CONSONANTS, VOWELS
from attention_jax.data.errors import DataFormatError, MissingDataError
from attention_jax.data.splits import split_keys

TRAIN_FILE = "g014b2b.train"
REF_FILE = "g014b2b.ref"
PACKAGE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "g014b2b")
PHONEMES = VOWELS | CONSONANTS
_WORD_RE = re.compile(r"^[A-Z']*[A-Z][A-Z']*$")


def source_files(manual_dir) -> tuple[str, str, str]:
  """(train path, ref path, where they came from): the manual dir's pair, else the package's."""
  if manual_dir is not None:
    found = [os.path.exists(os.path.join(manual_dir, f)) for f in (TRAIN_FILE, REF_FILE)]
    if all(found):
      return (os.path.join(manual_dir, TRAIN_FILE), os.path.join(manual_dir, REF_FILE),
              "manual dir")
    if any(found):
      have, lack = (TRAIN_FILE, REF_FILE) if found[0] else (REF_FILE, TRAIN_FILE)
      raise MissingDataError(f"{manual_dir} has {have} but not {lack}: put both there, or "
                             "neither to use the split shipped with attention_jax.")
  paths = [os.path.join(PACKAGE_DIR, f) for f in (TRAIN_FILE, REF_FILE)]
  for path in paths:
    if not os.path.exists(path):
      raise MissingDataError(f"{path} is missing: attention_jax was installed without its "
                             "package data; reinstall it with `pip install -e .`.")
  return paths[0], paths[1], "attention_jax package data (g014b2b)"


def _pronunciation(path, number: int, text: str) -> str:
  """The pronunciation `text`, checked: known phonemes, no stress digits."""
  phonemes = text.split()
  if not phonemes:
    raise DataFormatError(path, number, "empty pronunciation")
  for phoneme in phonemes:
    if phoneme[-1:].isdigit() and phoneme.rstrip("0123456789") in PHONEMES:
      raise DataFormatError(path, number, f"stress digit in {phoneme!r}: this split has none")
    if phoneme not in PHONEMES:
      raise DataFormatError(path, number, f"unknown ARPAbet phoneme {phoneme!r}")
  return " ".join(phonemes)


def read_lexicon(path) -> dict[str, list[str]]:
  """A g014b2b file: lower-cased word -> its distinct pronunciations in file order.

  Raises DataFormatError naming the file and line of a line without a tab, a word with
  characters other than A-Z and apostrophes, an unknown phoneme or a stress digit.
  """
  prons: dict[str, list[str]] = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      line = line.rstrip("\r\n")
      if not line.strip():
        continue
      word, tab, rest = line.partition("\t")
      if not tab:
        raise DataFormatError(path, number, f"expected WORD<TAB>PHONEMES, got {line!r}")
      if not _WORD_RE.match(word):
        raise DataFormatError(path, number, f"word {word!r} is not made of A-Z and apostrophes")
      known = prons.setdefault(word.lower(), [])
      for text in rest.split("\t"):
        pron = _pronunciation(path, number, text)
        if pron not in known:
          known.append(pron)
  return prons


def check_disjoint(train: dict, ref_path) -> None:
  """Raises DataFormatError at the first ref line whose word is also a train word."""
  with open(ref_path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      word = line.partition("\t")[0]
      if word.lower() in train:
        raise DataFormatError(ref_path, number, f"test word {word!r} is also in the train file")


def word_list_sha256(words) -> str:
  """sha256 of the sorted words, one per line: lets anyone check they drew the same dev set."""
  return hashlib.sha256("".join(f"{w}\n" for w in sorted(words)).encode()).hexdigest()


def split_words(train: dict, test: dict, dev_words: int, seed: int, train_path) -> dict:
  """{'train', 'dev', 'test'} -> sorted words; dev drawn from the train file's words."""
  if dev_words >= len(train):
    raise DataFormatError(train_path, 0, f"{len(train)} train words cannot give "
                          f"{dev_words} dev words and leave any to train on")
  words = split_keys(train, {"dev": dev_words, "train": None}, seed)
  return {"train": words["train"], "dev": words["dev"], "test": sorted(test)}
