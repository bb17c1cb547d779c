"""Vocabularies: text <-> integer ids, with pad=0, bos=1, eos=2, unk=3.

Two kinds, one interface (`encode`, `decode`, `size`, `save`, `load`):
  * `SymbolVocabulary`: characters (mode "chars": "abc" -> a, b, c) or
    whitespace-separated symbols (mode "symbols": "AH0 B" -> AH0, B), built from
    the train split and stored as JSON `{"mode": ..., "symbols": [...]}`;
  * `SentencePieceVocabulary`: a SentencePiece model trained offline on the
    train split (translation data), stored as the `.model` file.
`encode` never adds bos/eos: the pipeline decides where they go.
"""
import io
import json
import os
from typing import Iterable, Sequence

from attention_jax.data import paths
from attention_jax.data.errors import DataError, MissingDataError, first_line

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
SPECIALS = ("<pad>", "<s>", "</s>", "<unk>")
MODES = ("chars", "symbols")


def content_ids(ids: Iterable[int]) -> list[int]:
  """The ids a decoder emitted before its first EOS, less pad and bos."""
  kept = []
  for i in ids:
    i = int(i)
    if i == EOS_ID:
      break
    if i not in (PAD_ID, BOS_ID):
      kept.append(i)
  return kept


class SymbolVocabulary:
  """Characters or whitespace-separated symbols; ids 0-3 are the specials."""

  def __init__(self, symbols: Sequence[str], mode: str):
    if mode not in MODES:
      raise DataError(f"Unknown vocabulary mode {mode!r}; known: {MODES}.")
    symbols = list(symbols)
    clash = set(symbols) & set(SPECIALS)
    if clash or len(set(symbols)) != len(symbols):
      raise DataError(f"Vocabulary symbols must be unique and not specials: {sorted(clash)}")
    self.mode = mode
    self.symbols = symbols
    self._ids = {s: i + len(SPECIALS) for i, s in enumerate(symbols)}
    self._tokens = list(SPECIALS) + symbols

  @classmethod
  def build(cls, texts: Iterable[str], mode: str) -> "SymbolVocabulary":
    """Builds a vocabulary of every symbol in `texts`, sorted."""
    found = set()
    for text in texts:
      found.update(text if mode == "chars" else text.split())
    return cls(sorted(found), mode)

  @property
  def size(self) -> int:
    return len(self._tokens)

  def split(self, text: str) -> list[str]:
    return list(text) if self.mode == "chars" else text.split()

  def encode(self, text: str) -> list[int]:
    """text -> ids (unknown symbols map to UNK_ID; no bos/eos added)."""
    return [self._ids.get(s, UNK_ID) for s in self.split(text)]

  def decode(self, ids: Iterable[int]) -> str:
    """ids -> text; stops at the first EOS, skips pad and bos."""
    out = [self._tokens[i] if 0 <= i < len(self._tokens) else SPECIALS[UNK_ID]
           for i in content_ids(ids)]
    return "".join(out) if self.mode == "chars" else " ".join(out)

  def save(self, path: str | os.PathLike) -> None:
    data = json.dumps({"mode": self.mode, "symbols": self.symbols}, ensure_ascii=False, indent=0)
    paths.atomic_write_bytes(path, data.encode("utf-8"))

  @classmethod
  def load(cls, path: str | os.PathLike) -> "SymbolVocabulary":
    if not os.path.exists(path):
      raise MissingDataError(f"Vocabulary file {path} does not exist")
    try:
      with open(path, encoding="utf-8") as f:
        data = json.load(f)
      return cls(data["symbols"], data["mode"])
    except (OSError, ValueError, KeyError, TypeError, DataError) as e:
      raise DataError(f"Vocabulary file {path} is damaged ({first_line(e)})") from None


class SentencePieceVocabulary:
  """A SentencePiece model with the same special ids as `SymbolVocabulary`."""

  def __init__(self, model_proto: bytes):
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self._model_proto = model_proto
    self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.mode = "sentencepiece"

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int) -> "SentencePieceVocabulary":
    """Trains a unigram model on `texts` (in memory, offline; one thread, so deterministic)."""
    try:
      import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise MissingDataError("SentencePiece vocabularies need `pip install sentencepiece`.") from e
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_writer=model, vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, pad_id=PAD_ID, bos_id=BOS_ID,
        eos_id=EOS_ID, unk_id=UNK_ID, num_threads=1,
        # Small data sets: do not fail when the requested size is a bit too large.
        hard_vocab_limit=False, minloglevel=2)
    return cls(model.getvalue())

  @property
  def size(self) -> int:
    return self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    return list(self._sp.encode(text))

  def decode(self, ids: Iterable[int]) -> str:
    return self._sp.decode(content_ids(ids))

  def save(self, path: str | os.PathLike) -> None:
    paths.atomic_write_bytes(path, self._model_proto)

  @classmethod
  def load(cls, path: str | os.PathLike) -> "SentencePieceVocabulary":
    if not os.path.exists(path):
      raise MissingDataError(f"SentencePiece model {path} does not exist")
    try:
      with open(path, "rb") as f:
        return cls(f.read())
    except (OSError, RuntimeError) as e:  # SentencePiece raises RuntimeError for a bad model
      raise DataError(f"SentencePiece model {path} is damaged ({first_line(e)})") from None
