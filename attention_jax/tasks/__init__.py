"""Tasks: what a batch, a loss, a prediction and a score are, for each kind of problem.

`build_task(config, dataset)` makes the task named by `config.task.name`
(`seq2seq`, `lm`, `speech` or `image2seq`) around the model of `config.model`, sized to
the data's vocabularies. See `tasks/base.py` for the interface the trainer uses.
"""
from __future__ import annotations

from attention_jax.models.registry import build_model
from attention_jax.tasks.base import Task, cross_entropy, token_mask
from attention_jax.tasks.image import ImageTask
from attention_jax.tasks.lm import LMTask
from attention_jax.tasks.seq2seq import Seq2SeqTask
from attention_jax.tasks.speech import SpecAugment, SpeechTask

TASKS = {"seq2seq": Seq2SeqTask, "lm": LMTask, "speech": SpeechTask, "image2seq": ImageTask}
MODELS = {"seq2seq": ("rnn_seq2seq", "transformer"), "lm": ("lm",), "speech": ("speech",),
          "image2seq": ("image_rnn", "image_transformer")}


def check(config) -> None:
  """The task name and its model, or a ValueError naming the keys and the allowed values."""
  name = config.task.name
  if name not in TASKS:
    raise ValueError(f"task.name={name!r} is unknown; known: {', '.join(TASKS)}")
  if config.model.name not in MODELS[name]:
    raise ValueError(f"model.name={config.model.name!r} does not fit task.name={name!r}; "
                     f"it takes: {', '.join(MODELS[name])}")
  if name == "lm" and config.task.get("seq_len", 0) < 1:
    raise ValueError(f"task.seq_len must be positive for the lm task, got "
                     f"{config.task.get('seq_len')}")


def build_task(config, dataset, vocab_size: int | None = None) -> Task:
  """The task of `config` on `dataset` (or, for config checks without data, on vocabularies
  of `vocab_size` and no dataset)."""
  check(config)
  target = vocab_size or dataset.target_vocab.size
  model_config = dict(config.model, vocab_size=target)
  smoothing = config.task.get("label_smoothing", 0.0)
  if config.task.name == "lm":
    return LMTask(build_model(model_config), dataset, seq_len=config.task.seq_len,
                  label_smoothing=smoothing)
  if config.task.name == "speech":
    return _speech_task(config, dataset, build_model(model_config), smoothing)
  if config.task.name == "image2seq":
    keys = ("doubly_stochastic", "entropy_bonus", "sort_window", "reinforce_credit")
    given = {k: config.task[k] for k in keys if k in config.task}
    return ImageTask(build_model(model_config), dataset, label_smoothing=smoothing, **given)
  model_config["src_vocab_size"] = vocab_size or dataset.input_vocab.size
  given = {k: config.task[k] for k in ("reinforce_credit", "entropy_bonus") if k in config.task}
  return Seq2SeqTask(build_model(model_config), dataset, label_smoothing=smoothing, **given)


def _speech_task(config, dataset, model, smoothing: float) -> SpeechTask:
  task = config.task
  augment = SpecAugment(*(int(task.get(k, 0)) for k in SpecAugment._fields))
  given = {k: task[k] for k in ("ctc_weight", "ctc_decode_weight", "sort_window") if k in task}
  return SpeechTask(model, dataset, label_smoothing=smoothing, augment=augment, **given)


__all__ = ["ImageTask", "LMTask", "Seq2SeqTask", "SpeechTask", "TASKS", "Task", "build_task",
           "check", "cross_entropy", "token_mask"]
