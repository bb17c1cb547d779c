"""The train state initialised directly sharded, and the jitted, sharded steps."""
from __future__ import annotations

import functools

import flax.linen as nn
import jax
import optax

from attention_jax.train import partition, steps


def _plan(task, tx: optax.GradientTransformation, batch_size: int, mesh, rng: jax.Array):
  """(init: rng -> the train state of `task` with optimiser `tx`, boxed with logical axes;
  its shapes from `jax.eval_shape`; its shardings from the logical rules on `mesh`)."""
  example = task.example_batch(batch_size)

  def init(rng):
    params = task.init(rng, example)["params"]
    return steps.TrainState.create(apply_fn=task.model.apply, params=params, tx=tx)

  with partition.activate(mesh):
    abstract = jax.eval_shape(init, rng)
    return init, abstract, partition.logical_shardings(abstract, mesh)


def create_state(task, tx: optax.GradientTransformation, rng: jax.Array, batch_size: int,
                 mesh) -> tuple[steps.TrainState, object]:
  """Shapes and shardings from `_plan`, then one jitted init whose outputs land sharded
  (no full copy on one device first)."""
  init, _, shardings = _plan(task, tx, batch_size, mesh, rng)
  with partition.activate(mesh):
    state = jax.jit(lambda r: nn.meta.unbox(init(r)), out_shardings=shardings)(rng)
  return state, shardings


def abstract_state(task, tx: optax.GradientTransformation, batch_size: int, mesh):
  """The train state's shapes, dtypes and shardings without computing it: a restore
  target that compiles nothing (initialising the model compiles its whole forward)."""
  _, abstract, shardings = _plan(task, tx, batch_size, mesh, jax.random.key(0))
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      nn.meta.unbox(abstract), shardings)


def jit_steps(task, state_shardings, mesh, *, schedule: optax.Schedule):
  """(train_step(state, batch, rng), eval_step(params, batch)) compiled with explicit
  shardings; the train step donates the state."""
  batch = partition.batch_sharding(mesh)
  rep = partition.replicated(mesh)
  train = jax.jit(functools.partial(steps.train_step, loss_fn=task.loss, schedule=schedule),
                  in_shardings=(state_shardings, batch, rep), out_shardings=(state_shardings, rep),
                  donate_argnums=0)
  evaluate = jax.jit(functools.partial(steps.eval_step, loss_fn=task.loss),
                     in_shardings=(state_shardings.params, batch), out_shardings=rep)
  return train, evaluate
