r"""Train and evaluate one experiment config.

    python -m attention_jax.main --config=experiments/g2p_attention.py[:key=value,...] \
        --workdir=runs/g2p [--config.train.steps=3000 ...]

Flags only; the work is in `attention_jax.train.loop`. A bad config exits
with code 2 and one line naming the key, before anything is written.
"""
import os
import sys

from absl import app, flags, logging
import jax
from ml_collections import config_flags

from attention_jax.data import DataError
from attention_jax.train import distributed, loop

DEFAULT_CACHE_DIR = os.path.join(os.path.expanduser("~"), ".cache", "attention_jax", "jax")

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/g2p_attention.py:smoke=True.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots go.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # absl's INFO lines would bury the progress output
  if not jax.config.jax_compilation_cache_dir:  # $JAX_COMPILATION_CACHE_DIR wins
    # Reruns and sweep trials compile the same programs: keep them across processes.
    jax.config.update("jax_compilation_cache_dir", DEFAULT_CACHE_DIR)
  distributed.initialize()
  try:
    result = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (loop.ConfigError, DataError) as e:  # before anything was written
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except loop.NonFiniteError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  if result and jax.process_index() == 0:
    final = result["final"]
    print("eval: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()))
    print(f"results: {_WORKDIR.value}/result.json")
    if result.get("heatmaps"):
      print(f"heatmaps: {result['heatmaps']}")


if __name__ == "__main__":
  app.run(main)
