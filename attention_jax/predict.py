r"""Decode inputs with a trained run: one prediction and its log-probability per line.

    python -m attention_jax.predict --workdir=runs/g2p [--checkpoint=best|latest|STEP] \
        [--decode=greedy|beam|sample] [--beam_size=K] [--nbest=N] [--max_len=L] \
        [--temperature=T] [--seed=S] [--heatmap=DIR] [--format=text|json] [--input=FILE] \
        [inputs ...]

Inputs come from the arguments, else `--input=FILE`, else stdin, one per line: texts, or
for a speech run paths of audio files (any rate, mixed to mono, resampled to the data
set's 8 kHz, log-mel as in training), for an image run (OCR, captions) paths of image
files (greyscale, scaled to the data set's height). The run's
`config.json` gives the model and the data set (whose vocabularies encode the inputs, as
the trainer opens them). A score is log p(output | input) summed over the output's tokens
(EOS included), from one teacher-forced pass over the decoded output. For the lm task an
input is a prompt and the prediction its continuation (greedy or sampled; its score is
log p(continuation | prompt)). Nothing is written into the workdir. A mistake exits with
code 2 and one line naming it.
"""
from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging
import jax
import ml_collections
import numpy as np

from attention_jax import compile_cache, data, host_memory, tasks
from attention_jax.predict_io import PredictError
from attention_jax import predict_io as io_lib
from attention_jax import predict_lm
from attention_jax.train import checkpoint, optim, partition, setup
from attention_jax.viz import heatmaps

_WORKDIR = flags.DEFINE_string("workdir", None, "A training run's directory (read only).")
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", "latest", "latest, best (the best evaluation's, when the run kept it) or a step.")
_DECODE = flags.DEFINE_enum("decode", "greedy", ["greedy", "beam", "sample"],
                            "Decoding: greedy or beam (seq2seq); greedy or sample (lm).")
_TEMPERATURE = flags.DEFINE_float("temperature", 1.0, "lm sampling temperature.")
_SEED = flags.DEFINE_integer("seed", 0, "lm sampling: input i draws with key(seed) folded with i.")
_BEAM_SIZE = flags.DEFINE_integer("beam_size", 4, "Beams (--decode=beam).")
_NBEST = flags.DEFINE_integer("nbest", 1, "Print the N best beams (--decode=beam, N <= beam_size).")
_ALPHA = flags.DEFINE_float(
    "alpha", 0.6, "Beam length penalty: beams rank by log p / ((5 + length) / 6)^alpha, as in "
    "the evaluators; 0 ranks them by the printed log p.")
_MAX_LEN = flags.DEFINE_integer(
    "max_len", 0, "Longest output, EOS included; 0: the dev split's longest reference or the "
    "longest input, plus half again (at least 4), within the model's limit.")
_HEATMAP = flags.DEFINE_string("heatmap", None, "Write each input's attention heatmaps (PNG) here.")
_FORMAT = flags.DEFINE_enum("format", "text", ["text", "json"],
                            "text: `prediction<TAB>score` lines; json: one object per input.")
_INPUT = flags.DEFINE_string("input", None, "A file of inputs, one per line.")
flags.mark_flag_as_required("workdir")


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise PredictError(f"{workdir} has no config.json: not a training run's workdir")
  with open(path) as f:
    config = json.load(f)
  # Keys such as `_provenance` record the run; they are not config.
  return ml_collections.ConfigDict({k: v for k, v in config.items() if not k.startswith("_")})


def _steps(directory: str) -> list[int]:
  """The checkpoint steps in an Orbax directory (none when it does not exist)."""
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def find_checkpoint(workdir: str, which: str) -> tuple[str, int]:
  """(`checkpoints` or `best`, step) for --checkpoint=latest, best or a step."""
  latest, best = (_steps(os.path.join(workdir, name)) for name in ("checkpoints", "best"))
  have = (f"checkpoints: steps {', '.join(map(str, latest)) or 'none'}; best: "
          f"{', '.join(map(str, best)) or 'none'}")
  if not latest and not best:
    raise PredictError(f"{workdir} has no checkpoint (nothing in {workdir}/checkpoints)")
  if which == "latest":
    return ("checkpoints", latest[-1]) if latest else ("best", best[-1])
  if which == "best":
    if not best:
      raise PredictError(f"--checkpoint=best: the run in {workdir} kept no best checkpoint "
                         f"(it keeps one for early stopping or a use_best evaluator); {have}")
    return "best", best[-1]
  if not which.isdigit() or (int(which) not in latest and int(which) not in best):
    raise PredictError(f"--checkpoint={which} is not latest, best or a saved step; {have}")
  return ("checkpoints" if int(which) in latest else "best"), int(which)


def restore_params(config, task, workdir: str, name: str, step: int):
  """The parameters of checkpoint `name/step` that evaluation used (their moving average
  where training kept one: `optim.eval_params`), on the host. The directory exists (checked):
  `Checkpoints` would create a missing one. An explicit step sets nothing aside."""
  tx, _ = optim.make_optimizer(config.optim, config.train.steps)
  mesh = partition.make_mesh(config.train.mesh_shape)
  state_like = setup.abstract_state(task, tx, 1, mesh)
  ckpt = checkpoint.Checkpoints(workdir, 0, keep=1, name=name)
  try:
    state, _, _ = ckpt.restore(state_like, step)
  except checkpoint.CheckpointError as e:
    raise PredictError(str(e)) from None
  finally:
    ckpt.close()
  return jax.device_get(optim.eval_params(state))


def input_limit(model) -> int | None:
  """The longest source (EOS included) the model encodes: the Transformer's positional
  table, the location score's columns; None for other RNNs."""
  if model.max_decode_len is not None:
    return model.max_len
  if getattr(model, "score", None) == "location" and model.attention != "none":
    return model.max_len
  return None


def decode_budget(task, batch: dict, max_len: int) -> int:
  """--max_len, else the evaluators' default (the dev split's longest reference plus half
  again), or more for a longer text input: its length plus half again."""
  if max_len:
    try:
      task.check_decode_len(max_len, "--max_len")
    except ValueError as e:
      raise PredictError(str(e)) from None
    return max_len
  budget = task.default_decode_len("dev")
  if not _is_file(task):  # frames or pixels say little about the length of the output
    longest = int(batch["input_lengths"].max())  # EOS included
    budget = max(budget, longest + max(4, longest // 2))
  return min(budget, task.decode_limit() or budget)


def decode_ids(task, params, batch: dict, max_len: int) -> np.ndarray:
  """Decoded ids `[batch, n, max_len]`: n = --nbest beams, else the task's one output."""
  nbest = _DECODE.value == "beam" and _NBEST.value > 1
  ids = np.asarray(task.predict(params, batch, method=_DECODE.value, max_len=max_len,
                                beam_size=_BEAM_SIZE.value, alpha=_ALPHA.value, all_beams=nbest))
  return ids[:, :_NBEST.value] if nbest else ids[:, None]


def _is_file(task) -> bool:
  """Whether inputs are paths of files (audio, images) rather than text."""
  return bool(getattr(task.dataset, "feature_dim", None))


def input_records(task, texts: list[str]) -> list[dict]:
  """The inputs as the data set's records: texts checked against the vocabulary and the
  model's limit; audio files (speech) read into log-mel frames and checked against it,
  image files (image2seq) into columns of the data set's height."""
  dataset = task.dataset
  if not _is_file(task):
    vocab = dataset.target_vocab if task.name == "lm" else dataset.input_vocab
    io_lib.check_inputs(vocab, texts, input_limit(task.model))
    return [dataset.input_record(text) for text in texts]
  records = [dataset.input_record(path) for path in texts]  # a DataError names a bad file
  transformer = getattr(task.model, "encoder_type", None) == "transformer"
  limit = task.model.max_frames if transformer else None  # an image's width has none
  for record in records:
    frames = len(record["features"])
    if limit is not None and frames > limit:
      raise PredictError(f"input {record['inputs']!r} is {frames} frames long, longer than "
                         f"the model's limit of {limit} (model.max_frames)")
  return records


def predict_chunk(task, params, records: list[dict], step: int, offset: int) -> list[dict]:
  """The results of `records` (inputs `offset`... of the command); draws their heatmaps.
  A score is the task's `output_scores`: log p(output | input) for text, the decoding's
  mix of attention and CTC log-probabilities for speech."""
  dataset = task.dataset
  batch = io_lib.make_batch(dataset, records)
  ids = decode_ids(task, params, batch, decode_budget(task, batch, _MAX_LEN.value))
  n = ids.shape[1]
  outputs = [io_lib.until_eos(row) for row in ids.reshape(-1, ids.shape[-1])]
  repeated = [r for r in records for _ in range(n)]
  scored = io_lib.make_batch(dataset, repeated, [o for o, _ in outputs])
  scores = task.output_scores(params, scored, [done for _, done in outputs])
  results = []
  for i, record in enumerate(records):
    best = [{"prediction": task.text(ids[i, k]), "score": float(scores[i * n + k])}
            for k in range(n)]
    results.append({"input": record["inputs"], "prediction": best[0]["prediction"],
                    "score": best[0]["score"], "nbest": best})
  if _HEATMAP.value:
    draw(task, params, {k: v[::n] for k, v in scored.items()}, step, offset)
  return results


def draw(task, params, batch: dict, step: int, offset: int) -> None:
  """The attention of each input's (best) output, `input_<i>_<kind>.png` in --heatmap."""
  figures = task.heatmap_figures(params, batch, len(batch["inputs"]), step)
  if not figures:
    print("warning: the model has no attention to draw", file=sys.stderr)
  for stem, fig in figures.items():
    _, i, kind = stem.split("_", 2)  # example_<i>_<kind>
    heatmaps.save_figure(fig, os.path.join(_HEATMAP.value, f"input_{offset + int(i)}_{kind}.png"))


def predict_lm_one(task, params, text: str, step: int, index: int) -> dict:
  """Input `index`'s continuation (lm); draws its prompt and continuation's attention."""
  rng = jax.random.fold_in(jax.random.key(_SEED.value), index)
  result = predict_lm.predict_one(task, params, text, method=_DECODE.value,
                                  max_len=_MAX_LEN.value, temperature=_TEMPERATURE.value, rng=rng)
  if _HEATMAP.value:
    tokens = task.dataset.target_vocab.encode(text + result["prediction"])
    draw(task, params, {"inputs": np.asarray([tokens], np.int32)}, step, index)
  return result


def check_flags(task) -> None:
  if _DECODE.value not in task.decodes:
    raise PredictError(f"--decode={_DECODE.value} is not a decoding of task {task.name!r}; "
                       f"known: {', '.join(task.decodes)}")
  if _TEMPERATURE.value <= 0:
    raise PredictError(f"--temperature must be positive, got {_TEMPERATURE.value}")
  if _BEAM_SIZE.value < 1 or _NBEST.value < 1 or _MAX_LEN.value < 0:
    raise PredictError("--beam_size and --nbest must be at least 1, --max_len at least 0")
  if _NBEST.value > 1 and (_DECODE.value != "beam" or _NBEST.value > _BEAM_SIZE.value):
    raise PredictError(f"--nbest={_NBEST.value} needs --decode=beam and --beam_size at least "
                       f"{_NBEST.value}")


def run(workdir: str, args: list[str]) -> list[dict]:
  """Every input's result, in order."""
  config = load_config(workdir)
  name, step = find_checkpoint(workdir, _CHECKPOINT.value)
  task = tasks.build_task(config, data.from_config(config.data))
  check_flags(task)
  texts = io_lib.read_inputs(args, _INPUT.value)
  if not texts:
    raise PredictError("no inputs: give them as arguments, with --input=FILE or on stdin")
  records = input_records(task, texts)
  params = restore_params(config, task, workdir, name, step)
  if task.name == "lm":
    return [predict_lm_one(task, params, text, step, i) for i, text in enumerate(texts)]
  size = config.data.eval_batch_size
  return [r for i in range(0, len(records), size)
          for r in predict_chunk(task, params, records[i:i + size], step, i)]


def main(argv):
  logging.set_verbosity(logging.WARNING)
  host_memory.keep_freed_memory()
  compile_cache.enable()
  try:
    results = run(_WORKDIR.value, argv[1:])
  except (PredictError, data.DataError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  lines = io_lib.json_lines if _FORMAT.value == "json" else io_lib.text_lines
  for result in results:
    print("\n".join(lines(result)))


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, each mistake (a bad --decode) one line and exit code 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
