"""The Task redesign changed no number: the default experiment's first 100 training losses
equal, bit for bit, those the trainer gave before it on the same jax and CPU (recorded at
commit 613c3e6 by `golden/record_losses.py`, one record per machine it was run on)."""
import importlib.util
import json
import os

import jax
import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
_spec = importlib.util.spec_from_file_location("record_losses",
                                               os.path.join(HERE, "golden", "record_losses.py"))
record_losses = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(record_losses)


def test_default_experiment_losses_are_bitwise_those_before_the_redesign(tmp_path, shared_data_dir):
  with open(os.path.join(HERE, "golden", "g2p_attention_losses.json")) as f:
    golden = json.load(f)
  env = dict(os.environ, ATTENTION_JAX_DATA_DIR=shared_data_dir, JAX_PLATFORMS="cpu",
             JAX_DISABLE_MOST_OPTIMIZATIONS="0")  # the recording's compiler settings
  env.pop("XLA_FLAGS", None)
  # Evaluation reads no training randomness: a small one at the end keeps the test short.
  extra = ["--config.evals.dev.examples=8", "--config.evals.dev.heatmaps=0"]
  ours = record_losses.losses(str(tmp_path / "run"), golden["steps"], extra, env)
  assert len(ours) == golden["steps"]
  got, here = np.float32(ours), (jax.__version__, record_losses.cpu_model())
  same = [r for r in golden["records"] if (r["jax"], r["cpu"]) == here]
  if same:
    np.testing.assert_array_equal(got, np.float32(same[0]["losses"]))
  else:  # another XLA build or CPU may round differently; the losses must still agree closely
    for record in golden["records"]:
      np.testing.assert_allclose(got, np.float32(record["losses"]), rtol=1e-5)
