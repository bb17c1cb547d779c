"""The train state initialised directly sharded, and the jitted, sharded steps."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import optax

from attention_jax.train import partition, steps


def create_state(model: nn.Module, tx: optax.GradientTransformation, rng: jax.Array,
                 example_batch: dict, mesh) -> tuple[steps.TrainState, object]:
  """Shapes from `jax.eval_shape`, shardings from the logical rules, then one jitted
  init whose outputs land sharded (no full copy on one device first)."""

  def init(rng):
    variables = model.init(rng, example_batch["inputs"], example_batch["input_lengths"],
                           example_batch["decoder_inputs"])
    return steps.TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx)

  with partition.activate(mesh):
    abstract = jax.eval_shape(init, rng)
    shardings = partition.logical_shardings(abstract, mesh)
    state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
  return state, shardings


def jit_steps(state_shardings, mesh, *, label_smoothing: float, schedule: optax.Schedule):
  """(train_step, eval_step) compiled with explicit shardings; the state is donated."""
  batch = partition.batch_sharding(mesh)
  rep = partition.replicated(mesh)
  train = jax.jit(
      functools.partial(steps.train_step, label_smoothing=label_smoothing, schedule=schedule),
      in_shardings=(state_shardings, batch, rep), out_shardings=(state_shardings, rep),
      donate_argnums=0)
  evaluate = jax.jit(functools.partial(steps.eval_step, label_smoothing=label_smoothing),
                     in_shardings=(state_shardings, batch), out_shardings=rep)
  return train, evaluate
