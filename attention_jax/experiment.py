"""Shared pieces of the experiment configs in `experiments/`.

An experiment file defines `get_config(arg=None)`: it starts from
`base_config()`, sets its own defaults, and applies `parse_arg(arg, defaults)`,
where `arg` is the `key=value,...` after the colon in
`--config=experiments/<name>.py:key=value,...`. `smoke=True` shrinks any
config to a few steps of a tiny model (seconds on a CPU).
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from types import ModuleType
from typing import Any

import ml_collections
from ml_collections import config_dict


# One evaluator of `config.evals` (`evaluator(**changes)` fills in the rest).
EVALUATOR = dict(
    split="dev",
    every=500,  # steps between runs (and at the last step); 0: once, at the end of the run
    use_best=False,  # run with the best step's parameters (train.select_eval / select_by)
    examples=0,  # a seeded random sample of this many records (0: the whole split)
    sample_seed=0,  # which sample: the same seed draws the same records every time
    decode="greedy",  # seq2seq: greedy | beam; lm: sample | greedy; none: teacher-forced only
    max_len=0,  # decode budget (0: the task's default from the split and the model's limit)
    beam_size=4,
    beam_alpha=0.6,  # GNMT length penalty
    temperature=1.0,  # lm sampling
    prompt_len=32,  # lm: the window's opening that a sample continues
    metrics="sequence_accuracy",  # scorers of decoded text, comma-separated (evaluate/metrics.py)
    heatmaps=4,  # examples drawn as attention heatmaps (0: none)
    show=3,  # decoded examples printed
    predictions=False,  # write every decoded example to predictions_<name>.jsonl
)


def evaluator(**changes) -> ml_collections.ConfigDict:
  """An entry of `config.evals`: `EVALUATOR` with `changes`; a misspelt key is an error."""
  unknown = set(changes) - set(EVALUATOR)
  if unknown:
    raise ValueError(f"unknown evaluator keys {sorted(unknown)}; known: {', '.join(EVALUATOR)}")
  return ml_collections.ConfigDict(dict(EVALUATOR, **changes))


def test_evaluator(dev: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Scores the best dev step's parameters on the test split once, at the end, with the dev
  evaluator's decoding and metrics, and writes every prediction."""
  return evaluator(**dict(dev, split="test", every=0, use_best=True, examples=0, heatmaps=0,
                          show=0, predictions=True))


def add_beam_evaluators(c: ml_collections.ConfigDict, beam_size: int) -> None:
  """`dev_beam` (and `test_beam` beside a test evaluator): the whole dev (test) split
  decoded by beam search of `beam_size` at the best greedy-dev step; selection stays with
  the greedy `dev` evaluator, which runs during training."""
  beam = dict(decode="beam", beam_size=beam_size)
  c.evals.dev_beam = evaluator(**dict(c.evals.dev, every=0, use_best=True, examples=0,
                                      heatmaps=0, show=0, **beam))
  if "test" in c.evals:
    c.evals.test_beam = evaluator(**dict(c.evals.test, **beam))


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.data = ml_collections.ConfigDict(dict(
      name="cmudict_g2p/stress",  # see attention_jax/data/registry.py
      data_dir=config_dict.placeholder(str),  # None: $ATTENTION_JAX_DATA_DIR or ~/tensorflow_datasets
      manual_dir=config_dict.placeholder(str),  # raw files a builder cannot fetch (FreeDict)
      tokenizer=config_dict.placeholder(str),  # None: the data set's; 'vocab', 'sentencepiece', 'chars'
      vocab_size=config_dict.placeholder(int),  # SentencePiece size per side (None: the data set's)
      batch_size=64,  # global batch (split over the 'data' mesh axis and processes)
      eval_batch_size=256,  # global, like batch_size
  ))
  c.task = ml_collections.ConfigDict(dict(
      name="seq2seq",  # 'seq2seq' or 'lm' (attention_jax/tasks/)
      label_smoothing=0.0,
  ))
  # Vocabulary sizes come from the data. dtype 'bfloat16': mixed precision (params stay float32).
  c.model = ml_collections.ConfigDict(dict(name="rnn_seq2seq", dtype="float32"))
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=3e-3, warmup_steps=200, schedule="rsqrt", b1=0.9, b2=0.98,
      weight_decay=0.0, grad_clip_norm=1.0,
      ema_decay=0.0,  # > 0: evaluate, select and decode with the parameters' moving average
  ))
  c.train = ml_collections.ConfigDict(dict(
      steps=2000,
      log_every=50,  # metrics are fetched from the device, checked and written this often
      checkpoint_every=500,
      keep_checkpoints=3,
      mesh_shape=(-1, 1),  # (data, model); -1 takes the remaining devices
      select_eval="dev",  # the evaluator whose scores pick the best step
      select_by="",  # its metric that does ('' : wer, else bleu, else loss)
      early_stop_patience=0,  # stop after this many evals without a better select_by (0: never)
      deterministic=False,  # XLA's deterministic GPU reductions (slower; CPU: already so)
  ))
  # Named evaluators; an experiment adds `test` (test_evaluator) to score the best step.
  c.evals = ml_collections.ConfigDict({"dev": evaluator(examples=1000)})
  return c


# The `converged` sweeps' stopping rule (sweep overrides): select on the whole dev split, not
# the default 1,000 examples (on 1,000 G2P words dev WER moves by +-1.5 points between
# evaluations, and a first run stopped on that noise while its dev loss was still falling),
# and stop after 10 evaluations without a better score.
CONVERGED = {"evals.dev.examples": 0, "train.early_stop_patience": 10}


def parse_arg(arg: str | None, defaults: dict[str, Any]) -> dict[str, Any]:
  """'a=1,b=x' -> {'a': 1, 'b': 'x'} over `defaults`, typed like the defaults; a bare name
  of a boolean argument means True ('smoke' is 'smoke=True', as in big_vision's configs).

  Raises a ValueError naming an unknown key or a malformed item.
  """
  values = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, sep, text = item.partition("=")
    if key not in defaults:
      close = difflib.get_close_matches(key, defaults, n=1)
      hint = f"did you mean {close[0]!r}? " if close else ""
      raise ValueError(f"unknown config argument {key!r}; {hint}known: {', '.join(defaults)}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...); a bare name is "
                         "for boolean arguments only")
      text = "True"
    if isinstance(default, bool):
      if text not in ("True", "False", "true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={text!r} is not a bool")
      values[key] = text in ("True", "true", "1")
    elif isinstance(default, (int, float)):
      try:
        values[key] = type(default)(ast.literal_eval(text))
      except (ValueError, SyntaxError):
        raise ValueError(f"config argument {key}={text!r} is not a {type(default).__name__}") from None
    else:
      values[key] = text
  return values


def apply_smoke(c: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A few steps of a tiny model: checks the whole path in seconds."""
  c.data.batch_size, c.data.eval_batch_size = 16, 32
  c.train.update(steps=6, log_every=2, checkpoint_every=3)
  for ev in c.evals.values():
    ev.update(examples=min(ev.examples or 32, 32), heatmaps=min(ev.heatmaps, 2),
              show=min(ev.show, 1), every=3 if ev.every else 0)
  c.optim.warmup_steps = 2
  for key, value in dict(hidden_dim=16, src_embed_dim=8, tgt_embed_dim=8, d_model=16,
                         d_ff=32, num_layers=1, num_heads=2).items():
    if key in c.model:
      c.model[key] = value
  return c


def load(path: str) -> ModuleType:
  """The experiment file at `path` as a module (its get_config, sweep, ...); a ValueError of
  one line (file and line) when it is missing or fails to import."""
  name = os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(f"experiments.{name}", path)
  if spec is None or not os.path.isfile(path):
    raise ValueError(f"no experiment file at {path!r}")
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except SyntaxError as e:
    raise ValueError(f"{e.filename}:{e.lineno}: syntax error: {e.msg}") from None
  except Exception as e:  # pylint: disable=broad-except  # the file's own code failed
    raise ValueError(f"{_where(e, path)}: {type(e).__name__}: {e}") from None
  return module


def _where(error: BaseException, path: str) -> str:
  """'path:line' of the deepest frame of `error`'s traceback inside `path` (else 'path')."""
  line, tb = None, error.__traceback__
  while tb is not None:
    if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(path):
      line = tb.tb_lineno
    tb = tb.tb_next
  return f"{path}:{line}" if line else path


def config_from_spec(spec: str) -> ml_collections.ConfigDict:
  """The config of `path[:arg]`, called as ml_collections' config flag calls it; every
  mistake (file, import, argument) a ValueError of one line."""
  path, *arg = spec.split(":", 1)
  module = load(path)
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"{path} defines no get_config(arg=None)")
  try:
    return module.get_config(*arg)
  except ValueError as e:  # parse_arg's messages name the argument
    raise ValueError(f"--config={spec}: {e}") from None
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{_where(e, path)}: {type(e).__name__}: {e}") from None


def check_override(config: ml_collections.ConfigDict, dotted: str) -> None:
  """A ValueError naming `--config.<dotted>` unless it is a key of `config`, with the
  closest known key ('did you mean') or the known ones."""
  node, parts = config, dotted.split(".")
  for i, part in enumerate(parts):
    if not isinstance(node, ml_collections.ConfigDict):
      raise ValueError(f"--config.{dotted}: {'.'.join(parts[:i])} is a value, not a section")
    if part not in node:
      close = difflib.get_close_matches(part, list(node), n=1)
      hint = (f"did you mean --config.{'.'.join([*parts[:i], close[0]])}?" if close
              else f"known: {', '.join(node)}")
      raise ValueError(f"--config.{dotted}: no such config key; {hint}")
    node = node[part]


# ---- image to text (experiments/ocr_digits.py, experiments/caption_digits.py) ----

# The sweep's decoders: Xu et al. 2015's none / soft (with their context gate) / soft with
# the doubly stochastic term / hard (their recipe), Lu et al. 2017's adaptive attention,
# and the Transformer decoder.
IMAGE_MODELS = ("none", "soft", "soft_ds", "hard", "adaptive", "transformer")
IMAGE_DEFAULTS = dict(model="soft", steps=3000, test=False, smoke=False)
_RNN_ATTENTION = {"none": "none", "soft": "bahdanau", "soft_ds": "bahdanau", "hard": "hard",
                  "adaptive": "luong"}


def image_config(args: dict[str, Any], data: str, height: int, metrics: str,
                 select_by: str) -> ml_collections.ConfigDict:
  """An image2seq config: `args` from `parse_arg(arg, IMAGE_DEFAULTS)`, images `height`
  pixels high, dev scored by `metrics` and the best step picked by `select_by`."""
  kind = args["model"]
  if kind not in IMAGE_MODELS:
    raise ValueError(f"config argument model={kind!r} is unknown; known: "
                     f"{', '.join(IMAGE_MODELS)}")
  c = base_config()
  c.data.update(name=data, batch_size=32, eval_batch_size=100)
  # Xu et al.'s lambda = 1 per caption; our terms are per target token like the
  # cross-entropy, which keeps their ratio. Their entropy bonus on hard attention: 0.002.
  c.task = ml_collections.ConfigDict(dict(
      name="image2seq", label_smoothing=0.0,
      doubly_stochastic=1.0 if kind == "soft_ds" else 0.0,
      entropy_bonus=0.002 if kind == "hard" else 0.0,
      sort_window=8))  # batches of strips of similar widths: widths pad to a power of two
  # 8-16-32 channels: a third of 16-32-64's step time on a CPU (the convolutions dominate).
  cnn = dict(image_height=height, channels=(8, 16, 32), dtype="float32", dropout_rate=0.1)
  if kind == "transformer":
    c.model = ml_collections.ConfigDict(dict(
        name="image_transformer", d_model=128, num_heads=4, d_ff=256, num_layers=2,
        max_len=64, **cnn))
  else:
    c.model = ml_collections.ConfigDict(dict(
        name="image_rnn", attention=_RNN_ATTENTION[kind], score="additive", cell="lstm",
        tgt_embed_dim=64, hidden_dim=128, attention_dim=64,
        context_gate=kind in ("soft", "soft_ds"), sentinel=kind == "adaptive",
        expected_context_prob=0.5 if kind == "hard" else 0.0, **cnn))
  c.optim.update(learning_rate=2e-3, warmup_steps=200)
  c.train.update(steps=args["steps"], checkpoint_every=500, select_by=select_by)
  c.evals.dev = evaluator(every=250, examples=500, metrics=metrics, heatmaps=2)
  if args["test"]:
    c.evals.test = test_evaluator(c.evals.dev)
  if args["smoke"]:
    apply_smoke(c)
    c.data.name = data.partition("/")[0] + "/small"
    c.model.channels = (4, 4, 8)  # three stages, as in the full config: a small grid
    if "attention_dim" in c.model:
      c.model.attention_dim = 8
  return c


def image_sweep(add) -> None:
  """Every decoder of IMAGE_MODELS, 3 seeds, seed by seed (a sweep stopped early still has
  every comparison for the seeds it began), each scored on test at its best dev step."""
  for seed in range(3):
    for kind in IMAGE_MODELS:
      add(model=kind, seed=seed, test=True)
