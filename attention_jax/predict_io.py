"""What `attention_jax.predict` reads and prints: inputs, batches, checks, output lines.

Batches come from the trainer's own pipeline (`data.pipeline.make_pipeline`) over the
inputs as records, so a source is encoded exactly as in training: the data set's
`tokenize`, then EOS, then padding, with the same lengths and decoder inputs.
"""
from __future__ import annotations

import json
import sys
from typing import Sequence

import numpy as np

from attention_jax.data import pipeline
from attention_jax.data.vocab import EOS_ID, UNK_ID


class PredictError(ValueError):
  """A mistake in the command or its inputs; the CLI prints it as one line and exits 2."""


def read_inputs(args: Sequence[str], path: str | None) -> list[str]:
  """The inputs: the arguments, else the lines of `path`, else the lines of stdin."""
  if args and path:
    raise PredictError(f"give inputs as arguments or --input={path}, not both")
  if args:
    return list(args)
  if path:
    try:
      with open(path, encoding="utf-8") as f:
        return f.read().splitlines()
    except OSError as e:
      raise PredictError(f"cannot read --input={path}: {e.strerror}") from None
  return sys.stdin.read().splitlines()


class _Records:
  """The inputs as a data set the pipeline reads: split "predict" holds them, in order.

  A record's targets are given as ids (a decoded output, to score it teacher-forced):
  decoded ids need not survive a round trip through text.
  """

  def __init__(self, dataset, records: Sequence[dict], outputs: Sequence[Sequence[int]]):
    self.name, self._dataset = dataset.name, dataset
    self.feature_dim = getattr(dataset, "feature_dim", None)  # speech: frames, not ids
    self._records = [dict(r, ids=list(o)) for r, o in zip(records, outputs)]

  def source(self, split: str) -> list[dict]:
    del split
    return self._records

  def tokenize(self, record: dict) -> tuple[list[int], list[int]]:
    return self._dataset.tokenize(record)[0], record["ids"]


def make_batch(dataset, inputs: Sequence[str | dict],
               outputs: Sequence[Sequence[int]] | None = None) -> dict[str, np.ndarray]:
  """The pipeline's batch of `inputs` (texts, or records of `dataset.input_record`; targets:
  `outputs`, ids without EOS; default none), padded to the longest row, not to a bucket: a
  bucket may pass the model's length limit. Feature frames get no EOS, as in training."""
  records = [dataset.input_record(x) if isinstance(x, str) else x for x in inputs]
  outputs = outputs if outputs is not None else [[] for _ in records]
  longest_in = max(len(dataset.tokenize(r)[0]) for r in records)
  longest_out = max(max(len(o) for o in outputs), 1)
  source = _Records(dataset, records, outputs)
  batches = pipeline.make_pipeline(
      source, "predict", batch_size=len(records), train=False,
      max_input_length=longest_in, max_target_length=longest_out,
      input_buckets=(longest_in + 1,), target_buckets=(longest_out + 1,),
      add_eos_to_inputs=source.feature_dim is None, num_threads=0,
      process_index=0, process_count=1)
  return next(iter(batches))


def unknown_symbols(vocab, text: str) -> list[str]:
  """The symbols of `text` the vocabulary maps to <unk> (all pieces' ids for SentencePiece,
  which has no symbol list)."""
  ids = vocab.encode(text)
  if UNK_ID not in ids:
    return []
  split = getattr(vocab, "split", None)
  if split is None:
    return ["<unk>"]
  return sorted({s for s, i in zip(split(text), ids) if i == UNK_ID})


def check_inputs(vocab, texts: Sequence[str], limit: int | None) -> None:
  """A PredictError naming the input and what is wrong: symbols outside `vocab` (the
  source's; the lm's own for a prompt), or more ids (EOS included) than the model's
  `limit`."""
  for text in texts:
    bad = unknown_symbols(vocab, text)
    if bad:
      raise PredictError(f"input {text!r} has symbols outside the vocabulary: "
                         f"{', '.join(map(repr, bad))}")
    length = len(vocab.encode(text)) + 1
    if limit is not None and length > limit:
      raise PredictError(f"input {text!r} is {length} tokens long with EOS, longer than the "
                         f"model's limit of {limit} (model.max_len)")


def until_eos(row) -> tuple[list[int], bool]:
  """(the ids before the first EOS, whether there was one) of a decoded row."""
  row = [int(i) for i in np.asarray(row)]
  if EOS_ID in row:
    return row[:row.index(EOS_ID)], True
  return row, False


def text_lines(result: dict) -> list[str]:
  """`prediction<TAB>score` for each of the n best (one line without --nbest)."""
  return [f"{h['prediction']}\t{h['score']:.4f}" for h in result["nbest"]]


def json_lines(result: dict) -> list[str]:
  return [json.dumps(result, ensure_ascii=False)]
