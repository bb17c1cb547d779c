"""A TFDS builder base for text-to-text data sets, prepared offline as array_record.

Every data set here stores the same record (so one pipeline serves them all):

  inputs:     Text, the source string ("abbey", "3 1 4" without spaces, a German phrase)
  targets:    Text, the target string ("AE1 B IY0", ...)
  references: Sequence(Text), every acceptable target for this input (all
              pronunciations of a word; just [targets] where there is one)

Subclasses return the split contents from `_make_splits`; this class writes
the records, the character/symbol vocabularies of the train split (files
`vocab_inputs.json`, `vocab_targets.json` beside the records) and per-split
statistics into the dataset info's metadata. TFDS builds into an
`incomplete.*` directory and renames it at the end, so a failure (bad raw
file, missing package) never leaves a half-written data set behind.
"""
import abc
import hashlib
import inspect
from typing import Mapping, NamedTuple, Sequence

from etils import epath
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import utils as tfds_utils

from attention_jax.data.vocab import SymbolVocabulary

INPUT_VOCAB_FILE = "vocab_inputs.json"
TARGET_VOCAB_FILE = "vocab_targets.json"


class Row(NamedTuple):
  """One record before serialisation."""
  inputs: str
  targets: str
  references: Sequence[str]


def rows_by_split(references: Mapping[str, Sequence[str]],
                  keys_by_split: Mapping[str, Sequence[str]]) -> dict[str, list[Row]]:
  """Records of each split from `{input: [every reference]}`.

  Train gets one record per reference, so every pronunciation / translation
  is learned; dev and test one record per input, the first reference as the
  target and all of them kept for scoring.
  """
  return {name: [Row(key, ref, references[key]) for key in keys
                 for ref in (references[key] if name == "train" else references[key][:1])]
          for name, keys in keys_by_split.items()}


def file_sha256(path: str) -> str:
  """The source file's digest, recorded in the data set's metadata."""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


class TextToTextBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base class: subclasses set the class attributes and implement `_make_splits`."""

  INPUT_MODE = "chars"     # how inputs are tokenised: "chars" or "symbols"
  TARGET_MODE = "chars"    # same for targets
  DESCRIPTION = ""
  HOMEPAGE = None
  CITATION = None

  @tfds_utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS finds this through importlib.resources of the top package, which
    # fails for some editable installs (namespace packages); the file is enough.
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=self.DESCRIPTION,
        features=tfds.features.FeaturesDict({
            "inputs": tfds.features.Text(),
            "targets": tfds.features.Text(),
            "references": tfds.features.Sequence(tfds.features.Text()),
            **self._extra_features(),
        }),
        # Records keep the generator's order; the grain pipeline shuffles.
        disable_shuffling=True,
        homepage=self.HOMEPAGE,
        citation=self.CITATION,
        metadata=tfds.core.MetadataDict(),
    )

  def _extra_features(self) -> dict:
    """Record fields beside the three texts (none here)."""
    return {}

  def _split_stats(self, rows: list) -> dict:
    """Statistics of one split beside the text lengths (a builder whose inputs are not
    text replaces the input lengths here: frames, image widths)."""
    del rows
    return {}

  @abc.abstractmethod
  def _make_splits(self, dl_manager) -> tuple[dict[str, list[Row]], dict]:
    """Returns (split name -> rows, extra metadata such as seeds and versions)."""

  def _split_generators(self, dl_manager):
    splits, extra = self._make_splits(dl_manager)
    if "train" not in splits:
      raise ValueError(f"{self.name}: the splits must include 'train', got {sorted(splits)}.")
    train = splits["train"]
    in_vocab = SymbolVocabulary.build((r.inputs for r in train), self.INPUT_MODE)
    out_vocab = SymbolVocabulary.build((r.targets for r in train), self.TARGET_MODE)
    # self.data_path is the temporary build dir here: the vocabularies appear
    # together with the records or not at all.
    in_vocab.save(self.data_path / INPUT_VOCAB_FILE)
    out_vocab.save(self.data_path / TARGET_VOCAB_FILE)
    self.info.metadata.update(extra)
    self.info.metadata["split_stats"] = {
        name: {**_stats(rows, in_vocab, out_vocab), **self._split_stats(rows)}
        for name, rows in splits.items()}
    return {name: self._generate_examples(rows) for name, rows in splits.items()}

  def _generate_examples(self, rows):
    for i, row in enumerate(rows):
      yield i, {"inputs": row.inputs, "targets": row.targets,
                "references": list(row.references)}


def manual_dir_or_none(dl_manager):
  """The manual dir as a Path if it exists and is not empty, else None."""
  try:
    return dl_manager.manual_dir
  except AssertionError:  # TFDS's way of saying "not given / empty"
    return None


def _stats(rows: list[Row], in_vocab, out_vocab) -> dict:
  """Record count and max/mean lengths in vocabulary symbols (no bos/eos)."""
  in_lens = np.array([len(in_vocab.split(r.inputs)) for r in rows] or [0])
  # The longest reference, not just `targets`: decoders may produce any of them.
  out_lens = np.array([max(len(out_vocab.split(t)) for t in r.references) for r in rows] or [0])
  return {"num_examples": len(rows),
          "max_input_length": int(in_lens.max()), "max_target_length": int(out_lens.max()),
          "mean_input_length": round(float(in_lens.mean()), 3),
          "mean_target_length": round(float(out_lens.mean()), 3)}
