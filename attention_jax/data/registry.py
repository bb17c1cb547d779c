"""The data sets a config can name, and `get_dataset` which opens (and if need be builds) one.

Names are `name` or `name/config`, as in TFDS:

  cmudict_g2p[/stress|/no_stress|/standard]  CMUdict G2P, split by word (default: stress;
                                         standard: the published g014b2b split, no stress)
  algorithmic[/copy|/reverse|/sort|/addition]   length generalisation (default: copy)
  freedict_deu_eng                       FreeDict German -> English examples (manual_dir)
  wmt14[/de-en]                          TFDS's wmt14_translate, prepared by the user
  fortunes                               Debian fortune cookies, character LM (manual_dir)
  tiny_shakespeare                       TFDS's tiny_shakespeare, prepared by the user
  spoken_digits[/words|/digits|/unseen_speaker|/small]  connected FSDD digits, log-mel
                                         (manual_dir; small: 256 train utterances, smoke runs)
  digit_strings[/default|/long|/small|/sklearn]  OCR of strips of MNIST / sklearn digits
  digit_scenes[/default|/small]          captions of digits on a 3x3 grid (what is where)

Every `Dataset` exposes the same records (inputs, targets, references as str),
an input and a target vocabulary, and split names train / dev / test
(spoken_digits/unseen_speaker adds test_seen). `FeatureDataset` (spoken_digits)
also gives the pipeline each record's float32 `features` [frames, feature_dim];
`ImageDataset` (digit_strings, digit_scenes) gives an image's columns as the frames.
"""
import dataclasses
import os
import shutil
import threading
from typing import Any, Sequence

import numpy as np
import tensorflow_datasets as tfds

from attention_jax.data import integrity, paths
from attention_jax.data.algorithmic import Algorithmic
from attention_jax.data.cmudict_g2p import CmudictG2p
from attention_jax.data.digit_builders import DigitScenes, DigitStrings
from attention_jax.data.digit_builders import check_source as check_digit_source
from attention_jax.data.digit_images import image_features, read_image
from attention_jax.data.errors import (DamagedDataError, DataError, MissingDataError, damaged,
                                       first_line)
from attention_jax.data.fortunes import Fortunes, find_fortune_files
from attention_jax.data.freedict import FreedictDeuEng, find_source_file
from attention_jax.data.spoken_digits import SpokenDigits, check_source as check_recordings
from attention_jax.data.spoken_digits import file_features
from attention_jax.data.text_builder import INPUT_VOCAB_FILE, TARGET_VOCAB_FILE
from attention_jax.data.vocab import SentencePieceVocabulary, SymbolVocabulary

TOKENIZERS = ("vocab", "sentencepiece", "chars")
SPM_MAX_SENTENCES = 300_000  # SentencePiece trains on at most this many train sentences


@dataclasses.dataclass(frozen=True)
class Spec:
  """How to find, build and read one named data set."""
  builder_cls: Any                  # our TFDS builder class; None: TFDS's own, prepared by the user
  tfds_name: str                    # TFDS name of the builder
  configs: tuple[str, ...]          # known config names ("" when there are none)
  fields: tuple[str, str] = ("inputs", "targets")  # record keys of source and target text
  split_names: tuple[tuple[str, str], ...] = (("train", "train"), ("dev", "dev"), ("test", "test"))
  tokenizer: str = "vocab"          # default: "vocab" (files built with the data), "sentencepiece"
                                    # or "chars" (built from train when first asked for)
  vocab_size: int = 8000            # default SentencePiece size
  how_to_prepare: str = ""          # shown when the data set is missing and cannot be built here
  input_kind: str = "text"          # "text", or "features": float arrays [frames, dim] the
                                    # pipeline takes as inputs (`FeatureDataset`), or "image":
                                    # uint8 images whose columns are the frames (`ImageDataset`)
  featurize: Any = None             # features: a file's path -> its frames (predict's inputs);
                                    # image: (path, height) -> uint8 [height, width]

  @property
  def splits(self) -> list[str]:
    """Our split names, known without building the data set."""
    return [ours for ours, _ in self.split_names]


DATASETS = {
    "cmudict_g2p": Spec(CmudictG2p, "cmudict_g2p", ("stress", "no_stress", "standard")),
    "algorithmic": Spec(Algorithmic, "algorithmic", ("copy", "reverse", "sort", "addition")),
    "freedict_deu_eng": Spec(FreedictDeuEng, "freedict_deu_eng", ("",)),
    "wmt14": Spec(
        None, "wmt14_translate", ("de-en",), fields=("de", "en"),
        split_names=(("train", "train"), ("dev", "validation"), ("test", "test")),
        tokenizer="sentencepiece", vocab_size=32000,
        how_to_prepare=(
            "On a machine with network access and TensorFlow, run `tfds build wmt14_translate "
            "--config=de-en --file_format=array_record --data_dir=DIR` and copy DIR's "
            "wmt14_translate/ into the data dir.")),
    # After wmt14: error messages list the names in this order.
    "fortunes": Spec(Fortunes, "fortunes", ("",)),
    "tiny_shakespeare": Spec(
        None, "tiny_shakespeare", ("",), fields=("text", "text"),
        split_names=(("train", "train"), ("dev", "validation"), ("test", "test")),
        tokenizer="chars",
        how_to_prepare=(
            "On a machine with network access and TensorFlow, run `tfds build tiny_shakespeare "
            "--file_format=array_record --data_dir=DIR` and copy DIR's tiny_shakespeare/ into "
            "the data dir. Offline, `fortunes` (apt-get install fortunes) is the character-level "
            "corpus built here.")),
    "spoken_digits": Spec(
        SpokenDigits, "spoken_digits", ("words", "digits", "unseen_speaker", "small"),
        split_names=(("train", "train"), ("dev", "dev"), ("test", "test"),
                     ("test_seen", "test_seen")),  # test_seen: unseen_speaker only
        input_kind="features", featurize=file_features),
    "digit_strings": Spec(DigitStrings, "digit_strings", ("default", "long", "small", "sklearn"),
                          input_kind="image", featurize=read_image),
    "digit_scenes": Spec(DigitScenes, "digit_scenes", ("default", "small"),
                         input_kind="image", featurize=read_image),
}

# Builders whose raw files are checked before TFDS creates any directory:
# check(manual_dir, config object or None) raises a one-line DataError.
_SOURCE_CHECKS = {
    FreedictDeuEng: lambda manual_dir, _: find_source_file(manual_dir, manual_dir is None),
    Fortunes: lambda manual_dir, _: find_fortune_files(manual_dir, manual_dir is None),
    SpokenDigits: check_recordings,
    DigitStrings: check_digit_source,  # their sources are packages: is it installed?
    DigitScenes: check_digit_source,
}  # FreeDict and fortunes search their default dir only when no manual dir is given


def parse_name(name: str) -> tuple[str, str]:
  """'cmudict_g2p/no_stress' -> ('cmudict_g2p', 'no_stress'); the default config if none."""
  base, _, config = name.partition("/")
  if base not in DATASETS:
    raise DataError(f"Unknown data set {name!r}; known: "
                    + ", ".join(f"{n}/{{{','.join(s.configs)}}}" if s.configs != ("",) else n
                                for n, s in DATASETS.items()))
  spec = DATASETS[base]
  config = config or spec.configs[0]
  if config not in spec.configs:
    raise DataError(f"Unknown config {config!r} of data set {base!r}; known: {', '.join(spec.configs)}.")
  return base, config


def make_builder(name: str, data_dir: str | None = None, config=None) -> tfds.core.DatasetBuilder:
  """The TFDS builder for `name` ('base' or 'base/config').

  `config` may be a config name or a BuilderConfig object (then `name` is just the base name).
  """
  base, config = _resolve(name, config)
  config_name = config if isinstance(config, str) else None
  spec = DATASETS[base]
  data_dir = paths.resolve_data_dir(data_dir)
  if spec.builder_cls is None:
    full = f"{spec.tfds_name}/{config_name}" if config_name else spec.tfds_name
    try:
      return tfds.builder(full, data_dir=data_dir)
    except Exception as e:  # TFDS raises several kinds when neither code nor data is there
      raise MissingDataError(f"{full} is not prepared in {data_dir}. {spec.how_to_prepare}") from e
  version_dir = _version_dir(spec, config, data_dir)
  hint = integrity.rebuild_hint(_full_name(base, config), data_dir)
  integrity.check_info_files(version_dir, hint)
  try:
    return spec.builder_cls(config=config or None, data_dir=data_dir,
                            file_format="array_record")
  except Exception as e:  # pylint: disable=broad-except
    if not os.path.isdir(version_dir):
      raise  # nothing on disk to blame: a bug, not a damaged data set
    raise DamagedDataError(f"Cannot open the prepared data in {version_dir} "
                           f"({first_line(e)}); {hint}") from None


def _full_name(base: str, config) -> str:
  """'algorithmic/copy' for a config name or object; 'fortunes' for none."""
  config_name = getattr(config, "name", config)
  return f"{base}/{config_name}" if config_name else base


def _version_dir(spec: Spec, config, root: str) -> str:
  """`<root>/<name>/<config>/<version>` of one of our builders, without opening it
  (opening reads dataset_info.json, which may be the damaged file)."""
  cls = spec.builder_cls
  if isinstance(config, str):
    config = cls.builder_configs.get(config) if config else None
  version = (getattr(config, "version", None) if config is not None else None) or cls.VERSION
  return os.path.join(root, spec.tfds_name, config.name if config is not None else "", str(version))


def is_prepared(builder) -> bool:
  return (builder.data_path / "dataset_info.json").exists()


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None,
            config=None, force: bool = False) -> tfds.core.DatasetBuilder:
  """Builds the data set if it is not built yet (offline), or again if `force`; returns its builder.

  Builds hold `integrity.build_lock`, so a second process waits and then reads
  the first one's data set; the holder deletes what killed builds left behind.
  """
  base, config = _resolve(name, config)
  spec = DATASETS[base]
  root = paths.resolve_data_dir(data_dir)
  if spec.builder_cls is None:
    builder = make_builder(name, data_dir, config)
    if is_prepared(builder):
      return builder
    # TFDS has code for some of these (tiny_shakespeare) but it needs network and TensorFlow.
    raise MissingDataError(f"{builder.name} is not prepared in {builder.data_dir}. "
                           f"{spec.how_to_prepare}")
  version_dir = _version_dir(spec, config, root)
  if not force and os.path.exists(os.path.join(version_dir, "dataset_info.json")):
    return make_builder(base, root, config)
  check = _SOURCE_CHECKS.get(spec.builder_cls)
  if check is not None:
    check(manual_dir, _config_object(spec, config))  # fail early, clearly
  integrity.ensure_writable(root, _full_name(base, config))
  with integrity.build_lock(version_dir):
    if force and os.path.lexists(version_dir):
      shutil.rmtree(version_dir)
    return _build(base, root, manual_dir, config)


def _config_object(spec: Spec, config):
  """The BuilderConfig of a config name (None for builders without configs) or object."""
  if isinstance(config, str):
    return spec.builder_cls.builder_configs.get(config) if config else None
  return config


def _resolve(name: str, config) -> tuple[str, Any]:
  """(base name, config name ("" for none) or the BuilderConfig object `config`)."""
  if config is None:
    return parse_name(name)
  base = parse_name(name.partition("/")[0])[0]
  return (parse_name(f"{base}/{config}") if isinstance(config, str) else (base, config))


def _build(base: str, root: str, manual_dir: str | None, config) -> tfds.core.DatasetBuilder:
  """Builds one of our data sets; the caller holds its build lock."""
  builder = make_builder(base, root, config)
  if is_prepared(builder):
    return builder  # another process built it while this one waited for the lock
  full = _full_name(base, config)
  if os.path.lexists(builder.data_dir):  # builds rename complete dirs: this one is damaged
    raise DamagedDataError(f"{builder.data_dir} has no dataset_info.json; "
                           f"{integrity.rebuild_hint(full, root)}")
  try:
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except DataError:
    raise
  except OSError as e:  # disk full, permissions: TFDS deleted the partial build
    raise DataError(f"Building {full} in {root} failed ({first_line(e)}); "
                    "nothing was kept: fix that and rerun.") from None
  return builder


class Dataset:
  """A prepared data set: records, vocabularies and split statistics.

  Records are read through `source(split)`, a random-access sequence of dicts
  {inputs: str, targets: str, references: list[str]}; `tokenize` turns one
  into (input ids, target ids) without bos/eos.
  """

  def __init__(self, name: str, builder, spec: Spec, input_vocab, target_vocab):
    self.name = name
    self.builder = builder
    self.spec = spec
    self.input_vocab = input_vocab
    self.target_vocab = target_vocab
    self._splits = dict(spec.split_names)
    self._texts_cache: dict[str, list] = {}
    self.fix = _fix(spec, name, builder)  # how to rebuild it, for error messages

  @property
  def splits(self) -> dict[str, int]:
    """split name -> number of records."""
    info = self.builder.info.splits
    return {ours: info[theirs].num_examples for ours, theirs in self._splits.items() if theirs in info}

  @property
  def metadata(self) -> dict:
    return dict(self.builder.info.metadata or {})

  def source(self, split: str) -> "RecordSource":
    """The records the pipeline reads (`tokenize` takes them)."""
    return self._open(split, RecordSource)

  def _open(self, split: str, source_cls) -> "RecordSource":
    if split not in self.splits:  # a split of the spec may exist in one config only
      raise DataError(f"Unknown split {split!r} of {self.name}; known: {', '.join(self.splits)}.")
    theirs = self._splits[split]
    tfds_source = self.builder.as_data_source(split=theirs)
    info = self.builder.info.splits[theirs]
    shards = [(os.fspath(p), n) for p, n in zip(info.filepaths, info.shard_lengths)]
    return source_cls(tfds_source, self.spec.fields, shards, self.fix)

  def tokenize(self, record: dict) -> tuple[list[int], list[int]]:
    return self.input_vocab.encode(record["inputs"]), self.target_vocab.encode(record["targets"])

  def input_record(self, text: str) -> dict:
    """The record of a text given as an input (predict)."""
    return {"inputs": text, "targets": ""}

  def texts(self, split: str) -> list[dict]:
    """All records of a split in order (cached): what evaluation compares against."""
    if split not in self._texts_cache:
      src = self._open(split, RecordSource)  # text fields only, whatever `source` adds
      chunk = 4096
      self._texts_cache[split] = [r for i in range(0, len(src), chunk)
                                  for r in src.getitems(range(i, min(i + chunk, len(src))))]
    return self._texts_cache[split]

  def max_lengths(self, split: str) -> tuple[int, int]:
    """Longest (input, target) of a split in vocabulary tokens, without bos/eos."""
    stats = self.metadata.get("split_stats", {}).get(split)
    if stats and isinstance(self.input_vocab, SymbolVocabulary) and isinstance(
        self.target_vocab, SymbolVocabulary):
      return stats["max_input_length"], stats["max_target_length"]
    if self.splits[split] > 200_000:
      raise DataError(f"{self.name}/{split} is too large to scan for lengths; pass "
                      "max_input_length and max_target_length to the pipeline.")
    ins, outs = 0, 0
    for r in self.texts(split):
      ins = max(ins, len(self.input_vocab.encode(r["inputs"])))
      outs = max([outs] + [len(self.target_vocab.encode(t)) for t in r["references"]])
    return ins, outs


# A split whose shards hold at most this many bytes is read into memory whole at its first
# read: array_record's random reads cost ~47 us of CPU a record against ~5 us in one
# sequential pass (a G2P batch of 64: 3 ms of a 7 ms pipeline, on the 2 cores the step uses).
PRELOAD_BYTES = 64 << 20


class RecordSource:
  """Random access to decoded records as {inputs, targets, references} of str.

  Implements grain's batched-read protocol (`_getitems`): TFDS's array_record
  source reads many records at once about 50 times faster than one by one. A
  small split (`PRELOAD_BYTES`) is read whole at the first read and kept as bytes;
  its records are decoded when first asked for and then kept when `keep_decoded`.
  """
  keep_decoded = True  # text records are small; feature records (float frames) are not

  def __init__(self, tfds_source, fields: tuple[str, str],
               shards: Sequence[tuple[str, int]] = (), fix: str = ""):
    self._source = tfds_source
    self._fields = fields
    self._shards = list(shards)  # (path, records) of the split's files, in record order
    self._fix = fix
    self._lock = threading.Lock()  # grain reads from several threads
    self._bytes: list[bytes] | None = None  # every record, once a small split is read
    self._decoded: dict[int, dict] = {}
    sizes = [os.path.getsize(p) for p, _ in self._shards if os.path.exists(p)]
    self._preload = bool(sizes) and len(sizes) == len(self._shards) and sum(
        sizes) <= PRELOAD_BYTES

  def __len__(self) -> int:
    return len(self._source)

  def _convert(self, record: dict) -> dict:
    src, tgt = self._fields
    targets = record[tgt].decode("utf-8")
    refs = [r.decode("utf-8") for r in record.get("references", ())] or [targets]
    return {"inputs": record[src].decode("utf-8"), "targets": targets, "references": refs}

  def __getitem__(self, index: int) -> dict:
    return self.getitems([index])[0]

  def getitems(self, indices: Sequence[int]) -> list[dict]:
    indices = list(indices)
    if not self._preload:
      return [self._convert(r) for r in self._read(indices, self._source.__getitems__)]
    records = self._bytes or self._read_all()
    decode = self._source.dataset_info.features.deserialize_example_np
    out = []
    for i in indices:
      record = self._decoded.get(i)
      if record is None:
        record = self._convert(decode(records[i]))
        if self.keep_decoded:
          self._decoded[i] = record
      out.append(record)
    return out

  def _read(self, indices: list[int], read) -> list:
    """`read(indices)`, its failure (array_record's error names no file) as one line."""
    try:
      return read(indices)
    except (RuntimeError, OSError) as e:
      raise damaged(self._damaged_shard(indices), e, self._fix) from None

  def _read_all(self) -> list[bytes]:
    with self._lock:
      if self._bytes is None:
        every = list(range(len(self)))
        self._bytes = list(self._read(every, self._source.data_source.__getitems__))
    return self._bytes

  def _damaged_shard(self, indices: list[int]) -> str:
    """The shard whose records in `indices` fail to read, found by reading shard by shard."""
    start = 0
    for path, count in self._shards:
      mine = [i for i in indices if start <= i < start + count]
      start += count
      try:
        if mine:
          self._source.__getitems__(mine)
      except (RuntimeError, OSError):
        return path
    return " or ".join(path for path, _ in self._shards) or "a shard"

  _getitems = getitems  # the name grain looks for

  def __repr__(self) -> str:
    return f"RecordSource({self._source!r})"


class FeatureDataset(Dataset):
  """A data set whose inputs are float feature frames (spoken_digits' log-mel).

  `source(split)` records also hold `features`, float32 [frames, feature_dim];
  `tokenize` returns (features, target ids) and the pipeline pads the frames.
  `texts` keeps only the text fields (`inputs` names what was played), and
  `max_lengths` counts frames (the builder's split stats).
  """

  @property
  def feature_dim(self) -> int:
    return int(self.builder.info.features["features"].shape[-1])

  def source(self, split: str) -> "FeatureSource":
    return self._open(split, FeatureSource)

  def tokenize(self, record: dict) -> tuple[np.ndarray, list[int]]:
    return record["features"], self.target_vocab.encode(record["targets"])

  def input_record(self, path: str) -> dict:
    """The record of an audio file given as an input (predict): its features."""
    return {"inputs": path, "targets": "", "features": self.spec.featurize(path)}


class FeatureSource(RecordSource):
  """`RecordSource` records plus `features`, float32 [frames, feature_dim]."""
  keep_decoded = False

  def _convert(self, record: dict) -> dict:
    out = super()._convert(record)
    out["features"] = np.asarray(record["features"], np.float32)
    return out


class ImageDataset(FeatureDataset):
  """A data set whose inputs are uint8 images [height, width] (digit_strings, digit_scenes).

  The columns play the part of frames: `source(split)` records hold `features`, float32
  [width, height] = image.T / 255 (so the pipeline pads widths with black and
  `input_lengths` are widths), and the `image` itself. `feature_dim` is the height, and
  `max_lengths` gives (widest image, longest target) from the split stats.
  """

  @property
  def feature_dim(self) -> int:
    return int(self.builder.info.features["image"].shape[0])

  def source(self, split: str) -> "ImageSource":
    return self._open(split, ImageSource)

  def input_record(self, path: str) -> dict:
    """The record of an image file given as an input (predict): grey, light digits on
    black, `feature_dim` rows high (see `digit_images.read_image`)."""
    image = self.spec.featurize(path, self.feature_dim)
    return {"inputs": path, "targets": "", "features": image_features(image), "image": image}


class ImageSource(RecordSource):
  """`RecordSource` records plus `image`, uint8 [height, width], and its `features`."""

  def _convert(self, record: dict) -> dict:
    out = super()._convert(record)
    out["image"] = np.asarray(record["image"], np.uint8)
    out["features"] = image_features(out["image"])
    return out


_DATASET_CLASSES = {"text": Dataset, "features": FeatureDataset, "image": ImageDataset}


def get_dataset(name: str, *, data_dir: str | None = None, manual_dir: str | None = None,
                tokenizer: str | None = None, vocab_size: int | None = None,
                prepare_if_missing: bool = True, config=None) -> Dataset:
  """Opens a named data set, building it first if needed (offline).

  Args:
    name: 'cmudict_g2p', 'cmudict_g2p/no_stress', 'algorithmic/reverse', ... (see DATASETS).
    data_dir: root of prepared data; default from ATTENTION_JAX_DATA_DIR,
      TFDS_DATA_DIR or ~/tensorflow_datasets (see `paths`).
    manual_dir: where raw files the builder cannot fetch live (FreeDict, fortunes,
      spoken_digits' FSDD recordings).
    tokenizer: "vocab" (characters / symbols of the train split, files built
      with the data), "sentencepiece", or "chars" (characters of the train
      split, built on first use and cached beside the data: for data sets
      without vocabulary files such as tiny_shakespeare); default per data set.
    vocab_size: SentencePiece vocabulary size (default per data set).
    prepare_if_missing: build the data set when it is not in data_dir.
    config: a BuilderConfig object instead of a named config (tests, custom
      algorithmic sizes); its name must be new.
  """
  base = parse_name(name)[0]
  spec = DATASETS[base]
  if config is not None:
    name = f"{base}/{config.name}"
  elif spec.configs != ("",):
    name = f"{base}/{parse_name(name)[1]}"
  integrity.check_root(paths.resolve_data_dir(data_dir))
  builder = make_builder(name if config is None else base, data_dir, config)
  if not is_prepared(builder):
    if not prepare_if_missing:
      raise MissingDataError(f"{name} is not prepared in {builder.data_dir}; run "
                             f"`python -m attention_jax.data.prepare {name}`.")
    builder = prepare(name if config is None else base, data_dir, manual_dir, config)
  integrity.check_shards(builder, _fix(spec, name, builder))
  if spec.builder_cls is not None:
    integrity.clean_stale(os.fspath(builder.data_dir))
  tokenizer = tokenizer or spec.tokenizer
  if tokenizer == "vocab":
    in_vocab, out_vocab = _vocab_files(builder, spec, name)
  elif tokenizer == "sentencepiece":
    size = vocab_size or spec.vocab_size
    dataset = Dataset(name, builder, spec, None, None)
    in_vocab = _sentencepiece(dataset, "inputs", size)
    out_vocab = _sentencepiece(dataset, "targets", size)
  elif tokenizer == "chars":
    dataset = Dataset(name, builder, spec, None, None)
    in_vocab, out_vocab = _chars(dataset, "inputs"), _chars(dataset, "targets")
  else:
    raise DataError(f"Unknown tokenizer {tokenizer!r}; known: {', '.join(TOKENIZERS)}.")
  return _DATASET_CLASSES[spec.input_kind](name, builder, spec, in_vocab, out_vocab)


def _fix(spec: Spec, name: str, builder) -> str:
  """How to rebuild a prepared data set (ours: `prepare --force`)."""
  if spec.builder_cls is None:
    return spec.how_to_prepare
  return integrity.rebuild_hint(name, os.fspath(builder.data_dir_root))


def _vocab_files(builder, spec: Spec, name: str) -> tuple[SymbolVocabulary, SymbolVocabulary]:
  """The vocabularies built with the data (our builders always write both)."""
  files = [builder.data_path / INPUT_VOCAB_FILE, builder.data_path / TARGET_VOCAB_FILE]
  if spec.builder_cls is None and not files[0].exists():
    raise DataError(f"{name} has no character/symbol vocabulary; use tokenizer='chars' or "
                    "'sentencepiece'.")
  try:
    return SymbolVocabulary.load(files[0]), SymbolVocabulary.load(files[1])
  except DataError as e:
    raise DamagedDataError(f"{e}; {_fix(spec, name, builder)}") from None


def from_config(data_config) -> Dataset:
  """`get_dataset` with the arguments of an experiment config's `data` block."""
  return get_dataset(data_config.name, data_dir=data_config.data_dir,
                     manual_dir=data_config.manual_dir, tokenizer=data_config.get("tokenizer"),
                     vocab_size=data_config.get("vocab_size"))


def _sentencepiece(dataset: Dataset, side: str, size: int) -> SentencePieceVocabulary:
  """Loads the side's SentencePiece model beside the data, training it on train first if absent."""
  path = os.path.join(os.fspath(dataset.builder.data_path), f"spm_{side}_{size}.model")
  if os.path.exists(path):
    return _load_cached(SentencePieceVocabulary.load, path)
  src = dataset.source("train")
  n = min(len(src), SPM_MAX_SENTENCES)
  texts = [r[side] for i in range(0, n, 4096) for r in src.getitems(range(i, min(i + 4096, n)))]
  vocab = SentencePieceVocabulary.train(texts, size)
  _save_cached(vocab, path)
  return vocab


def _chars(dataset: Dataset, side: str) -> SymbolVocabulary:
  """Loads the side's character vocabulary beside the data, building it from train if absent."""
  path = os.path.join(os.fspath(dataset.builder.data_path), f"chars_{side}.json")
  if os.path.exists(path):
    return _load_cached(SymbolVocabulary.load, path)
  vocab = SymbolVocabulary.build((r[side] for r in dataset.texts("train")), "chars")
  _save_cached(vocab, path)  # atomic: concurrent first uses write the same file
  return vocab


def _load_cached(load, path: str):
  """A vocabulary built on first use; a damaged one can simply be built again."""
  try:
    return load(path)
  except DataError as e:
    raise DamagedDataError(f"{e}; delete it: the next run builds it again from the train "
                           "split.") from None


def _save_cached(vocab, path: str) -> None:
  try:
    vocab.save(path)
  except OSError as e:
    raise DataError(f"Cannot write the vocabulary {path} ({first_line(e)}); make the data "
                    "dir writable.") from None
