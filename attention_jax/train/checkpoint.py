"""Orbax checkpoints in `<workdir>/checkpoints`: the train state and the data position.

A rerun of the same command restores the latest step, including the input
iterator's state, so it continues the exact batch sequence. Orbax writes
each step into a temporary directory and renames it when complete, so a
run killed mid-save leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """Save every `every` steps (and when asked), keep the last `keep`."""

  def __init__(self, workdir: str, every: int, keep: int = 3, name: str = "checkpoints"):
    self.every = every
    self.manager = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, name)),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def due(self, step: int) -> bool:
    """Whether `step` is one of the periodic saves."""
    return self.every > 0 and step % self.every == 0

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """Save at multiples of `every`, or always with `force`; returns whether it saved."""
    if not force and not self.due(step):
      return False
    if self.manager.latest_step() == step:
      return False  # already saved (e.g. the final step is also a multiple of `every`)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
    return True

  def restore(self, state_like: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """(state, data iterator state, step) of `step` or the latest, laid out like `state_like`."""
    step = self.manager.latest_step() if step is None else step
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    return restored["state"], restored["data"], step

  def wait(self) -> None:
    """Block until background saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
