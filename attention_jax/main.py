r"""Train and evaluate one experiment config.

    python -m attention_jax.main --config=experiments/g2p_attention.py[:key=value,...] \
        --workdir=runs/g2p [--config.train.steps=3000 ...]

Flags only; the work is in `attention_jax.train.loop`. A bad config exits
with code 2 and one line naming the key, before anything is written.
"""
import os
import signal
import sys

INTERRUPTED = "interrupted; rerun the command to resume from the last checkpoint"


def _interrupted(signum, frame):
  """Ctrl-C outside the training steps (imports, building data, compiling, the final
  evaluations), where the training loop's own handler is not installed: there is nothing
  to save beyond the last checkpoint, so one line and exit 130, not a traceback."""
  del signum, frame
  print(INTERRUPTED, file=sys.stderr, flush=True)
  os._exit(130)  # pylint: disable=protected-access  # a traceback-free exit from any frame


if __name__ == "__main__":  # the command only: an importer keeps its own Ctrl-C
  signal.signal(signal.SIGINT, _interrupted)  # before the imports below, which take seconds

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app, flags, logging
import jax
from ml_collections import config_flags

from attention_jax import compile_cache, experiment, host_memory
from attention_jax.data import DataError
from attention_jax.train import distributed, loop, provenance

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file, e.g. experiments/g2p_attention.py:smoke=True.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and plots go.")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, after our own checks of the experiment file and the override
  names: each mistake is one line and exit code 2, never a traceback."""
  try:
    spec, overrides = _config_args(argv[1:])
    if spec:
      config = experiment.config_from_spec(spec)
      for dotted in overrides:
        experiment.check_override(config, dotted)
    return flags.FLAGS(argv)
  except (ValueError, flags.Error) as e:
    print(f"error: {str(e).strip().splitlines()[0]}", file=sys.stderr)
    sys.exit(2)


def _config_args(args: list[str]) -> tuple[str | None, list[str]]:
  """(the --config value, the dotted names of the --config.<key> overrides) in `args`."""
  spec, overrides = None, []
  for i, arg in enumerate(args):
    name, sep, value = arg.partition("=")
    if name in ("--config", "-config"):
      spec = value if sep else (args[i + 1] if i + 1 < len(args) else None)
    elif name.startswith(("--config.", "-config.")):
      overrides.append(name.split("config.", 1)[1])
  return spec, overrides


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.set_verbosity(logging.WARNING)  # absl's INFO lines would bury the progress output
  host_memory.keep_freed_memory()  # before XLA's threads start
  compile_cache.enable()
  config = _CONFIG.value
  # Absolute before anything uses it: Orbax, the lock and result paths agree on one place.
  workdir = os.path.abspath(os.path.expanduser(_WORKDIR.value))
  if config.train.get("deterministic"):
    provenance.set_deterministic()  # XLA reads its flags when the backend starts, just below
  distributed.initialize()
  try:
    result = loop.train_and_evaluate(config, workdir)
  except (loop.ConfigError, DataError) as e:  # before anything was written
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except loop.Interrupted as e:  # Ctrl-C in training: saved, as after SIGTERM
    print(e, file=sys.stderr)
    sys.exit(e.exit_code)
  except loop.RunError as e:  # after training began: the message says what is kept
    print(f"error: {e}", file=sys.stderr)
    sys.exit(e.exit_code)
  except KeyboardInterrupt:  # a second Ctrl-C while the loop was saving after the first
    print(INTERRUPTED, file=sys.stderr)
    sys.exit(130)
  if result and jax.process_index() == 0:
    final = result["final"]
    print("eval: " + ", ".join(f"{k} {v:.4g}" for k, v in final.items()))
    print(f"results: {workdir}/result.json")
    if result.get("heatmaps"):
      print(f"heatmaps: {result['heatmaps']}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
