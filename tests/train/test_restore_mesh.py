"""A checkpoint saved on one mesh restores on another to the same train state, laid out on
the new mesh: saved on 8 simulated devices (2x4), restored on 1 and on 4x2; saved on 1,
restored on 4x2 and 8x1."""
import json
import os
import subprocess
import sys

import numpy as np

# Runs in a fresh process: the device count is fixed when JAX starts.
# argv: checkpoint dir to save into ('' for none), then 'dir=mesh' pairs to restore from.
SCRIPT = r"""
import json, sys
import jax, numpy as np
from attention_jax import tasks
from attention_jax.models.registry import build_model
from attention_jax.train import checkpoint, optim, partition, setup

def state_on(mesh, seed):
  model = build_model(dict(name="transformer", vocab_size=12, d_model=16, num_heads=4, d_ff=32,
                           num_layers=1, max_len=16))
  tx, _ = optim.make_optimizer(dict(name="adamw", learning_rate=3e-3, warmup_steps=0,
      schedule="constant", b1=0.9, b2=0.98, weight_decay=0.0, grad_clip_norm=0.0), 10)
  task = tasks.Seq2SeqTask(model, None)
  return setup.create_state(task, tx, jax.random.key(seed), 8, mesh)[0]

def flat(tree):
  return {"/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}

save_dir, *restores = sys.argv[1:]
out = {}
if save_dir:
  mesh = partition.make_mesh((2, 4) if jax.device_count() == 8 else (1, 1))
  state = state_on(mesh, seed=0)
  ckpt = checkpoint.Checkpoints(save_dir, 0, keep=1)
  ckpt.save(3, state, {"position": 7}, force=True)
  ckpt.wait()
  ckpt.close()
  np.savez(save_dir + ".npz", **flat(state))
for item in restores:
  path, shape = item.split("=")
  mesh = partition.make_mesh(tuple(json.loads(shape)))
  like = state_on(mesh, seed=1)  # other values: the restore must overwrite every one
  ckpt = checkpoint.Checkpoints(path, 0, keep=1)
  state, data_state, step = ckpt.restore(like)
  ckpt.close()
  np.savez(f"{path}_on_{shape}.npz", **flat(state))
  kernel = next(v for path, v in jax.tree_util.tree_flatten_with_path(state.params)[0]
                if jax.tree_util.keystr(path).endswith("['self_attention']['query']['kernel']"))
  out[item] = dict(step=step, data=data_state, mesh=dict(mesh.shape),
                   kernel_mesh=dict(kernel.sharding.mesh.shape),
                   kernel_spec=str(kernel.sharding.spec))
print(json.dumps(out))
"""


def _run(devices, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                      f" --xla_force_host_platform_device_count={devices}").strip()
  proc = subprocess.run([sys.executable, "-c", SCRIPT, *map(str, args)], capture_output=True,
                        text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def _assert_same_state(saved, restored):
  saved, restored = np.load(saved), np.load(restored)
  assert sorted(saved.files) == sorted(restored.files)
  assert len(saved.files) > 10  # params and both Adam moments, not an empty tree
  for key in saved.files:
    np.testing.assert_array_equal(restored[key], saved[key], err_msg=key)


def test_checkpoints_restore_across_meshes(tmp_path):
  one, eight = tmp_path / "saved_on_1", tmp_path / "saved_on_8"
  _run(1, one)
  restored = _run(8, eight, f"{one}=[4,2]", f"{one}=[8,1]", f"{eight}=[4,2]")
  restored.update(_run(1, "", f"{eight}=[1,1]"))
  for item, info in restored.items():
    path, shape = item.split("=")
    assert info["step"] == 3 and info["data"] == {"position": 7}, item
    assert info["kernel_mesh"] == info["mesh"], item  # laid out on the restoring mesh
    _assert_same_state(f"{path}.npz", f"{path}_on_{shape}.npz")
  # The 4x2 restore really splits the heads over 'model' (else it proves little).
  assert "model" in restored[f"{one}=[4,2]"]["kernel_spec"]
  assert restored[f"{eight}=[4,2]"]["mesh"] == {"data": 4, "model": 2}
  assert restored[f"{eight}=[1,1]"]["mesh"] == {"data": 1, "model": 1}
