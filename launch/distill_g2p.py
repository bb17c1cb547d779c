r"""Sequence-level knowledge distillation for G2P (Kim & Rush 2016): a g014b2b split whose
train words carry a teacher's pronunciation in place of the dictionary's.

    python -m launch.ensemble --members A B C --evals=dev_beam --split=train \
        --workdir=runs/teachers/abc                    # the teacher decodes every train word
    python -m launch.distill_g2p --teacher=runs/teachers/abc --out=runs/distilled/abc
    python -m attention_jax.main --workdir=runs/g2p_student \
        --config=experiments/g2p_attention.py:standard=True,test=True,distilled=runs/distilled/abc

The teacher is a run's or an ensemble's workdir whose evaluator decoded the train split
(`predictions_<evaluator>.jsonl`; --evaluator picks one where it holds several). The out
dir gets `g014b2b.train`, one line per train word with the teacher's pronunciation (and the
dictionary's beside it with --keep-references), the dev words' lines as the source had them
(dev is drawn from the train file's words by a fixed seed, so a student's dev set is the
same words, scored against the dictionary); `g014b2b.ref`, the test words, copied; and
`distill.json`: the teacher, the source files' sha256, the counts, and how many train
words the teacher got wrong against every reference. A student reads the out dir as its
manual dir, with a data dir of its own inside it (g2p_attention's `distilled` argument
sets both). An empty teacher output keeps the dictionary's pronunciations (counted).
Exit 2 with one line when the predictions miss a train word, give a word two different
pronunciations, name a word that is not a train word, or the out dir already holds a split.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys

from attention_jax.data import cmudict_g2p, cmudict_standard as standard, errors, paths
from attention_jax.data.text_builder import file_sha256


class DistillError(Exception):
  """A bad teacher, source or out dir; the message is one line."""


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="python -m launch.distill_g2p",
                              description=__doc__.split("\n")[0])
  p.add_argument("--teacher", required=True,
                 help="a run's or ensemble's workdir whose evaluator decoded the train split")
  p.add_argument("--evaluator", help="which predictions_<evaluator>.jsonl (default: the one)")
  p.add_argument("--out", required=True, help="the distilled split's dir (a manual dir)")
  p.add_argument("--source", help="a dir with the g014b2b.train and g014b2b.ref to distil "
                                  "(default: the split shipped with attention_jax)")
  p.add_argument("--keep-references", action="store_true",
                 help="keep the dictionary's pronunciations beside the teacher's")
  return p


def predictions_file(teacher: str, evaluator: str | None) -> str:
  """The teacher's predictions_<evaluator>.jsonl."""
  if evaluator:
    path = os.path.join(teacher, f"predictions_{evaluator}.jsonl")
    if not os.path.exists(path):
      raise DistillError(f"{path} does not exist")
    return path
  found = sorted(glob.glob(os.path.join(teacher, "predictions_*.jsonl")))
  if len(found) != 1:
    raise DistillError(f"{teacher} holds {len(found)} predictions_*.jsonl files; name one "
                       f"with --evaluator" if found else f"{teacher} holds no predictions")
  return found[0]


def teacher_outputs(path: str) -> dict[str, str]:
  """word -> the teacher's pronunciation, one per word (a word decoded twice must agree)."""
  out: dict[str, str] = {}
  with open(path, encoding="utf-8") as f:
    for number, line in enumerate(f, start=1):
      record = json.loads(line)
      word, pron = record["source"], " ".join(record["prediction"].split())
      if out.setdefault(word, pron) != pron:
        raise DistillError(f"{path}:{number}: {word!r} predicted twice, as {out[word]!r} "
                           f"and {pron!r}")
  return out


def distil(train: dict, test: dict, teacher: dict, keep: bool, where: str,
           dev_words: int | None = None) -> tuple:
  """(word -> pronunciations to write, counts, the dev words' sha256): the teacher's for
  train words, the dictionary's for the `dev_words` dev words (default: the standard
  split's)."""
  dev_words = dev_words or cmudict_g2p.CmudictG2p.builder_configs["standard"].dev_words
  words = standard.split_words(train, test, dev_words, cmudict_g2p.SPLIT_SEED, where)
  missing = [w for w in words["train"] if w not in teacher]
  if missing:
    raise DistillError(f"the teacher's predictions miss {len(missing)} of "
                       f"{len(words['train'])} train words (first: {missing[0]!r}): decode "
                       f"the train split (launch.ensemble --split=train)")
  strangers = sorted(set(teacher) - set(words["train"]))
  if strangers:
    raise DistillError(f"the teacher's predictions hold {len(strangers)} words that are not "
                       f"train words (first: {strangers[0]!r}): decode the train split")
  out, wrong, empty = {}, 0, 0
  for word in sorted(train):
    pron = teacher.get(word) if word not in words["dev"] else None
    empty += pron == ""
    if not pron:
      out[word] = train[word]
      continue
    wrong += pron not in train[word]
    out[word] = list(dict.fromkeys([pron] + (train[word] if keep else [])))
  kept = set(words["train"])  # the vocabulary is built from the train split
  lost = _symbols(train, kept) - _symbols(out, kept)
  if lost:  # the student's phoneme vocabulary would differ from its teachers'
    raise DistillError(f"no train pronunciation left holds {', '.join(sorted(lost))}: the "
                       f"student could not output it; use --keep-references")
  counts = {"train_words": len(words["train"]), "dev_words": len(words["dev"]),
            "teacher_wrong_train_words": wrong, "empty_teacher_outputs": empty,
            "pronunciations_written": sum(map(len, out.values()))}
  return out, counts, standard.word_list_sha256(words["dev"])


def _symbols(lexicon: dict, words: set) -> set[str]:
  return {p for w in words for pron in lexicon[w] for p in pron.split()}


def write(args, dev_words: int | None = None) -> dict:
  """Checks everything, then writes the out dir; returns distill.json's contents."""
  out = os.path.abspath(args.out)
  if any(os.path.exists(os.path.join(out, f)) for f in (standard.TRAIN_FILE,
                                                        standard.REF_FILE)):
    raise DistillError(f"{out} already holds a g014b2b split; use another --out")
  predictions = predictions_file(args.teacher, args.evaluator)
  if args.source and not os.path.exists(os.path.join(args.source, standard.TRAIN_FILE)):
    raise DistillError(f"--source={args.source} holds no {standard.TRAIN_FILE}")
  train_path, ref_path, origin = standard.source_files(args.source)
  train, test = standard.read_lexicon(train_path), standard.read_lexicon(ref_path)
  lexicon, counts, dev_sha = distil(train, test, teacher_outputs(predictions),
                                    args.keep_references, train_path, dev_words)
  os.makedirs(out, exist_ok=True)
  text = "".join(f"{w.upper()}\t" + "\t".join(p) + "\n" for w, p in lexicon.items())
  paths.atomic_write_bytes(os.path.join(out, standard.TRAIN_FILE), text.encode())
  shutil.copyfile(ref_path, os.path.join(out, standard.REF_FILE))
  record = {"teacher": os.path.abspath(args.teacher),
            "predictions": os.path.abspath(predictions),
            "keep_references": args.keep_references, "source": origin,
            "source_sha256": {os.path.basename(p): file_sha256(p)
                              for p in (train_path, ref_path)},
            "dev_words_sha256": dev_sha, **counts}
  paths.atomic_write_bytes(os.path.join(out, "distill.json"),
                           json.dumps(record, indent=1).encode())
  return record


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  try:
    record = write(args)
  except (DistillError, errors.DataError) as e:
    print(f"launch.distill_g2p: {e}", file=sys.stderr)
    return 2
  print(f"{args.out}: {record['train_words']} train words from the teacher "
        f"({record['teacher_wrong_train_words']} unlike every reference), "
        f"{record['dev_words']} dev words as they were; train a student with "
        f"experiments/g2p_attention.py:standard=True,distilled={args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
