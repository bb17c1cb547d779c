"""Checkpoints round-trip the sharded state and the data position exactly."""
import asyncio
import gc
import types

import jax
import numpy as np

from attention_jax import tasks
from attention_jax.models.registry import build_model
from attention_jax.train import checkpoint, optim, partition, setup

OPTIM = dict(name="adamw", learning_rate=1e-2, warmup_steps=0, schedule="constant", b1=0.9,
             b2=0.98, weight_decay=0.0, grad_clip_norm=1.0)


def _state():
  model = build_model(dict(name="transformer", vocab_size=12, d_model=16, num_heads=2, d_ff=32,
                           num_layers=1, max_len=8))
  tx, _ = optim.make_optimizer(OPTIM, 10)
  mesh = partition.make_mesh((-1, 1))
  return setup.create_state(tasks.Seq2SeqTask(model, None), tx, jax.random.key(0), 2, mesh)[0]


def test_save_and_restore_round_trip(tmp_path):
  state = _state()
  # Make the optimizer state non-trivial so the round trip checks it.
  bump = lambda a: a + (0.5 if np.issubdtype(a.dtype, np.floating) else 3)
  state = state.replace(step=state.step + 7, opt_state=jax.tree.map(bump, state.opt_state))
  ckpt = checkpoint.Checkpoints(str(tmp_path), every=5, keep=2)
  assert ckpt.latest_step() is None
  assert not ckpt.save(7, state, {"position": 1})  # not a multiple of 5
  assert ckpt.save(7, state, {"position": 7}, force=True)
  assert not ckpt.save(7, state, {"position": 7}, force=True)  # already there
  ckpt.wait()
  fresh = _state()
  restored, data_state, step = checkpoint.Checkpoints(str(tmp_path), every=5).restore(fresh)
  assert step == 7 and data_state == {"position": 7}
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(a, b)
    assert a.sharding == b.sharding


def test_keeps_only_the_last_checkpoints(tmp_path):
  state = _state()
  ckpt = checkpoint.Checkpoints(str(tmp_path), every=1, keep=2)
  for step in (1, 2, 3):
    ckpt.save(step, state, {"position": step})
  ckpt.wait()
  assert sorted(ckpt.manager.all_steps()) == [2, 3]
  ckpt.close()


def test_an_orbax_writers_unretrieved_failure_is_not_logged_others_are(tmp_path, caplog):
  """A save's writers that fail after the first (a full disk) are freed unretrieved, and
  asyncio would log each with a traceback: the caller already has that failure in one line.
  A task of anyone else's code is still logged."""
  checkpoint.Checkpoints(str(tmp_path), every=1)  # installs the filters
  from orbax.checkpoint._src.serialization import serialization  # a file of orbax's

  async def write():
    raise OSError(28, "No space left on device")
  orbax_write = types.FunctionType(write.__code__.replace(co_filename=serialization.__file__),
                                   globals(), "write")

  async def ours():
    raise OSError(28, "No space left on device")

  for coroutine, logged in ((orbax_write, False), (ours, True)):
    caplog.clear()
    loop = asyncio.new_event_loop()

    async def main():
      asyncio.ensure_future(coroutine())
      await asyncio.sleep(0.01)
    loop.run_until_complete(main())
    loop.close()
    gc.collect()
    assert any("never retrieved" in r.getMessage() for r in caplog.records) == logged
