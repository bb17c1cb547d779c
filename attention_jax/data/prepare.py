"""Builds data sets offline: `python -m attention_jax.data.prepare NAME [NAME...]`.

  python -m attention_jax.data.prepare cmudict_g2p            # every config
  python -m attention_jax.data.prepare cmudict_g2p/no_stress algorithmic
  python -m attention_jax.data.prepare freedict_deu_eng --manual_dir /usr/share/dictd
  python -m attention_jax.data.prepare spoken_digits --manual_dir DIR   # FSDD's recordings/
  python -m attention_jax.data.prepare all                    # everything buildable here
  python -m attention_jax.data.prepare algorithmic/copy --force   # delete and build again

A name without a config builds every config. `--force` deletes a prepared data
set first: the fix for a damaged one (the error that found it says so). The
data dir is --data_dir, else $ATTENTION_JAX_DATA_DIR, else $TFDS_DATA_DIR,
else ~/tensorflow_datasets. Two processes preparing the same data set take
turns (a file lock); a killed build's `incomplete.*` dir is removed by the next.
Prints one line per data set with its split sizes and the seconds it took.
"""
import argparse
import sys
import time

from attention_jax.data import registry
from attention_jax.data.errors import DataError


def expand(names: list[str]) -> list[str]:
  """'cmudict_g2p' -> every config; 'all' -> every data set built from local files."""
  out = []
  for name in names:
    if name == "all":
      out += expand([n for n, s in registry.DATASETS.items() if s.builder_cls is not None])
      continue
    base, _, config = name.partition("/")
    registry.parse_name(name)  # raises a clear error for unknown names
    configs = registry.DATASETS[base].configs
    if config or configs == ("",):
      out.append(name)
    else:
      out += [f"{base}/{c}" for c in configs]
  return out


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("names", nargs="+", help="data set names, e.g. cmudict_g2p or algorithmic/sort, or all")
  parser.add_argument("--data_dir", default=None, help="root of prepared data sets")
  parser.add_argument("--manual_dir", default=None,
                      help="directory with raw files (FreeDict, fortunes, FSDD recordings)")
  parser.add_argument("--force", action="store_true",
                      help="delete the prepared data set and build it again")
  args = parser.parse_args(argv)
  try:
    for name in expand(args.names):
      start = time.perf_counter()
      if args.force:
        registry.prepare(name, data_dir=args.data_dir, manual_dir=args.manual_dir, force=True)
      dataset = registry.get_dataset(name, data_dir=args.data_dir, manual_dir=args.manual_dir)
      sizes = ", ".join(f"{k} {v:,}" for k, v in dataset.splits.items())
      print(f"{name}: {sizes} records in {dataset.builder.data_dir} "
            f"({time.perf_counter() - start:.1f} s)", flush=True)
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
