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


class MetricWriter:
  """Appends one JSON line per record (step, split, metrics) and mirrors them to TensorBoard.

  `enabled=False` (the other processes of a multi-process job) writes nothing.
  """

  def __init__(self, workdir: str, enabled: bool = True):
    self._enabled = enabled
    if enabled:
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
      self._tb = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, metrics: dict[str, Any]) -> None:
    if not self._enabled:
      return
    row = {"step": int(step), "split": split}
    row.update({k: float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    for key, value in metrics.items():
      self._tb.add_scalar(f"{split}/{key}", float(value), int(step))

  def image(self, step: int, tag: str, rgba: np.ndarray) -> None:
    if self._enabled:
      self._tb.add_image(tag, rgba[..., :3], int(step), dataformats="HWC")

  def close(self) -> None:
    if self._enabled:
      self._jsonl.close()
      self._tb.close()


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
