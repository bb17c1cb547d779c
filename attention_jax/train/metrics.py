"""Metrics to `metrics.jsonl`, TensorBoard event files and the terminal."""
from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import numpy as np
import tensorboardX
import tqdm


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


class MetricWriter:
  """Appends one JSON line per record (step, split, metrics) and mirrors them to TensorBoard.

  `enabled=False` (the other processes of a multi-process job) writes nothing.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    if enabled:
      self._path = os.path.join(workdir, "metrics.jsonl")
      self._jsonl = open(self._path, "a")
      self._tb_dir = os.path.join(workdir, "tensorboard")
      self._tb = tensorboardX.SummaryWriter(self._tb_dir)

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    """Appends a record; an OSError (a full disk) names metrics.jsonl."""
    if not self._enabled:
      return
    row = {"step": int(step), "split": split}
    row.update({k: float(v) for k, v in metrics.items()})
    try:
      self._jsonl.write(json.dumps(row) + "\n")
      self._jsonl.flush()
    except OSError as e:
      raise OSError(e.errno, e.strerror, self._path) from None
    for key, value in metrics.items():
      self._tb.add_scalar(f"{split}/{key}", float(value), int(step))

  def hparams(self, config: dict[str, Any], metrics: dict[str, float]) -> None:
    """TensorBoard's HParams summaries of the run (in `tensorboard/hparams/`): the config's
    values by dotted key, and `metrics` as `hparams/<name>` (apart from the scalar tags),
    so `tensorboard --logdir=<sweep root>` compares a sweep's trials in its HParams tab."""
    if self._enabled:
      values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
                for k, v in flatten(config).items() if v is not None}
      self._tb.add_hparams(values, {f"hparams/{k}": float(v) for k, v in metrics.items()},
                           name="hparams")

  def image(self, step: int, tag: str, rgba: np.ndarray) -> None:
    if self._enabled:
      self._tb.add_image(tag, rgba[..., :3], int(step), dataformats="HWC")

  def close(self) -> None:
    """Closes both files; an OSError (a full disk) names the file and is raised once,
    after both are closed (no second traceback from tensorboardX's exit hook)."""
    if not self._enabled:
      return
    error = None
    try:
      self._jsonl.close()
    except OSError as e:
      error = OSError(e.errno, e.strerror, self._path)
    try:
      self._tb.close()
    except OSError as e:
      self._discard_tensorboard()
      error = error or OSError(e.errno, e.strerror, self._tb_dir)
    if error is not None:
      raise error

  def _discard_tensorboard(self) -> None:
    """Drops the events tensorboardX could not write: points its files at a sink so its
    close (and its atexit hook) succeed and stop its writer thread."""
    # pylint: disable=protected-access
    for writer in (self._tb.all_writers or {}).values():
      records = writer.event_writer._ev_writer._py_recordio_writer
      full, records._writer = records._writer, _Sink()  # first: its thread may be writing
      try:
        full.close()
      except OSError:
        pass  # the unwritten tail is lost either way
    self._tb.close()


class _Sink:
  """A file that discards what is written (no fileno: tensorboardX then skips fsync)."""

  def write(self, data: bytes) -> int:
    return len(data)

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class Progress:
  """A tqdm bar on an interactive terminal; plain periodic lines otherwise; silent when
  not `enabled` (the other processes of a multi-process job)."""

  def __init__(self, start: int, total: int, every: int, enabled: bool = True):
    self._enabled = enabled
    self._interactive = enabled and sys.stderr.isatty()
    self._bar = tqdm.tqdm(initial=start, total=total, unit="step",
                          disable=not self._interactive, dynamic_ncols=True)
    self._every, self._total = every, total
    self._time = time.perf_counter()

  def update(self, step: int, metrics: dict[str, float]) -> None:
    self._bar.update(1)
    if step % self._every and step != self._total:
      return
    text = ", ".join(f"{k} {metrics[k]:.4g}" for k in ("loss", "accuracy", "steps_per_s")
                     if k in metrics)
    if self._interactive:
      self._bar.set_postfix_str(text)
    elif self._enabled:
      print(f"step {step}/{self._total}: {text}", flush=True)

  def write(self, text: str) -> None:
    if self._enabled:
      (self._bar.write if self._interactive else print)(text)

  def close(self) -> None:
    self._bar.close()
