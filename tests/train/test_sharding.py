"""Sharded == single device: the same steps on 8 simulated CPU devices (4x2, 8x1) and on 1 of
them (a 1x1 mesh), in one process per model (each process start imports JAX anew)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

# Runs in a fresh process: the device count is fixed when JAX starts.
SCRIPT = r"""
import json, sys
import jax, numpy as np
from attention_jax import tasks
from attention_jax.models.registry import build_model
from attention_jax.train import optim, partition, setup

def one_device_mesh():
  axes = (jax.sharding.AxisType.Auto,) * 2
  return jax.sharding.Mesh(np.array(jax.devices()[:1]).reshape(1, 1), partition.MESH_AXES,
                           axis_types=axes)

def run(mesh_shape):
  mesh = partition.make_mesh(mesh_shape) if mesh_shape != [1, 1] else one_device_mesh()
  model = build_model(dict(name=sys.argv[2], vocab_size=12, d_model=16, num_heads=2, d_ff=32,
                           num_layers=2, max_len=16, dropout_rate=0.1)
                      if sys.argv[2] == "transformer" else
                      dict(name=sys.argv[2], vocab_size=12, attention="bahdanau", score="additive",
                           hidden_dim=16, src_embed_dim=8, tgt_embed_dim=8, dropout_rate=0.1))
  rng = np.random.default_rng(0)
  b, s, t = 8, 6, 5
  targets = rng.integers(3, 12, (b, t)).astype(np.int32)
  batch = {"inputs": rng.integers(3, 12, (b, s)).astype(np.int32),
           "input_lengths": rng.integers(2, s + 1, (b,)).astype(np.int32), "targets": targets,
           "target_lengths": rng.integers(1, t + 1, (b,)).astype(np.int32),
           "weights": np.ones((b,), np.float32),
           "decoder_inputs": np.concatenate([np.ones((b, 1), np.int32), targets[:, :-1]], 1)}
  tx, schedule = optim.make_optimizer(dict(name="adamw", learning_rate=3e-3, warmup_steps=2,
      schedule="rsqrt", b1=0.9, b2=0.98, weight_decay=0.01, grad_clip_norm=1.0), 100)
  task = tasks.Seq2SeqTask(model, None, label_smoothing=0.1)
  state, shardings = setup.create_state(task, tx, jax.random.key(0), b, mesh)
  train, _ = setup.jit_steps(task, shardings, mesh, schedule=schedule)
  losses = []
  with partition.activate(mesh):
    for _ in range(4):
      state, metrics = train(state, partition.shard_batch(batch, mesh), jax.random.key(1))
      losses.append([float(metrics["loss"]), float(metrics["l2_params"])])
  specs = {"/".join(str(getattr(k, "key", k)) for k in path): str(sh.spec)
           for path, sh in jax.tree_util.tree_flatten_with_path(shardings.params)[0]}
  return {"losses": losses, "mesh_devices": mesh.size, "specs": specs}

print(json.dumps({str(shape): run(shape) for shape in json.loads(sys.argv[1])}))
"""


def _run(mesh_shapes, model):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
  proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(mesh_shapes), model],
                        capture_output=True, text=True, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("model", ["transformer", "rnn_seq2seq"])
def test_sharded_runs_equal_the_single_device_run(model):
  runs = _run([[1, 1], [4, 2], [8, 1]], model)
  single = runs["[1, 1]"]
  assert single["mesh_devices"] == 1
  for mesh_shape in ([4, 2], [8, 1]):
    sharded = runs[str(mesh_shape)]
    assert sharded["mesh_devices"] == 8
    np.testing.assert_allclose(sharded["losses"], single["losses"], rtol=1e-5, atol=1e-5,
                               err_msg=f"mesh {mesh_shape}")
    if model == "transformer" and mesh_shape == [4, 2]:
      # The model axis really splits the heads (else this test would prove little).
      query = [v for k, v in sharded["specs"].items() if k.endswith("self_attention/query/kernel")]
      assert query and all("model" in spec for spec in query), sharded["specs"]
