"""Sweep expansion: an experiment's `sweep(add)` -> trials, each with a name and a command.

An experiment file declares its grid as a function `sweep(add)`: every
`add(**overrides)` is one trial, and products or zips are plain Python loops.
An override key without a dot is a config argument (what follows the colon in
`--config=experiments/x.py:key=value`); a dotted key sets that config value
(`add(**{"train.steps": 5000})` -> `--config.train.steps=5000`); `seed` sets
`config.seed`. `--seeds K` repeats every trial with seeds 0..K-1, `--seeds A:B` with seeds
A..B-1 (more seeds for a sweep that has run some: a root's runs are found by name).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import sys
from typing import Any

from attention_jax import experiment

# Characters kept in keys and values; anything else becomes '-' and the name gets a hash.
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
_MAX_NAME = 96


@dataclasses.dataclass(frozen=True)
class Trial:
  name: str  # the trial's directory under the sweep root
  overrides: dict[str, Any]  # as passed to add(), plus `seed` with --seeds
  config: Any = dataclasses.field(default=None, compare=False, repr=False)  # what it will run

  def config_arg(self, config_spec: str) -> tuple[str, str]:
    """(experiment file, its `key=value,...` argument): the spec's, then this trial's."""
    path, args = split_spec(config_spec)
    args.update({k: str(v) for k, v in self.overrides.items() if "." not in k and k != "seed"})
    return path, join_args(args)

  def command(self, config_spec: str, workdir: str, python: str = sys.executable) -> list[str]:
    """The trainer command line for this trial."""
    path, arg = self.config_arg(config_spec)
    flags = [f"--config.{k}={v}" for k, v in self.overrides.items() if "." in k]
    if "seed" in self.overrides:
      flags.append(f"--config.seed={self.overrides['seed']}")
    return [python, "-m", "attention_jax.main", f"--config={path}{':' + arg if arg else ''}",
            *flags, f"--workdir={workdir}"]


def split_spec(config_spec: str) -> tuple[str, dict[str, str | None]]:
  """'experiments/x.py:a=1,b' -> ('experiments/x.py', {'a': '1', 'b': None}); a bare name
  (a boolean argument set to True) stays bare for the experiment's parse_arg to check."""
  path, _, arg = config_spec.partition(":")
  args = {}
  for item in filter(None, arg.split(",")):
    key, sep, value = item.partition("=")
    args[key] = value if sep else None
  return path, args


def join_args(args: dict[str, str | None]) -> str:
  """The inverse of split_spec's argument dict: 'a=1,b'."""
  return ",".join(k if v is None else f"{k}={v}" for k, v in args.items())


def trial_name(overrides: dict[str, Any]) -> str:
  """A readable directory name such as 'attention=luong,score=dot,seed=1'.

  Keys are sorted (seed last). A name that needed characters replaced, or is
  longer than 96 characters, is cut and ends in a hash of the overrides, so
  different overrides never share a directory.
  """
  if not overrides:
    return "default"
  keys = sorted(overrides, key=lambda k: (k == "seed", k))
  text = ",".join(f"{k}={overrides[k]}" for k in keys)
  safe = ",".join(f"{_SAFE.sub('-', k)}={_SAFE.sub('-', str(overrides[k]))}" for k in keys)
  if safe == text and len(text) <= _MAX_NAME:  # no ',' or '=' inside: the name reads back
    return text
  digest = hashlib.sha1(json.dumps(overrides, sort_keys=True, default=str).encode()).hexdigest()
  return safe[:_MAX_NAME - 9] + "-" + digest[:8]


def build_config(module, config_spec: str, trial: Trial) -> Any:
  """The trial's config, so unknown arguments or keys fail before anything runs."""
  _, arg = trial.config_arg(config_spec)
  try:
    config = module.get_config(arg or None)
  except ValueError as e:
    raise ValueError(f"trial {trial.name}: {e}") from None
  for key in (k for k in trial.overrides if "." in k):
    *parents, last = key.split(".")
    node = config
    for part in parents:
      node = node.get(part) if hasattr(node, "get") else None
    if not hasattr(node, "keys") or last not in node:
      raise ValueError(f"trial {trial.name}: config has no key {key!r}")
    try:
      node[last] = trial.overrides[key]
    except (TypeError, ValueError) as e:
      raise ValueError(f"trial {trial.name}: {key}={trial.overrides[key]!r}: {e}") from None
  if "seed" in trial.overrides:
    config.seed = trial.overrides["seed"]
  return config


def parse_seeds(text: str | int) -> range:
  """--seeds: 'K' -> seeds 0..K-1 ('0': none, each trial as its sweep adds it), 'A:B' -> A..B-1."""
  start, colon, stop = str(text).rpartition(":")
  try:
    seeds = range(int(start) if colon else 0, int(stop))
  except ValueError:
    seeds = None
  if seeds is None or seeds.start < 0 or seeds.stop < 0 or (colon and not seeds):
    raise ValueError(f"--seeds={text}: expected K (seeds 0..K-1) or A:B (seeds A..B-1, "
                     "0 <= A < B)")
  return seeds


def expand(config_spec: str, sweep: str = "sweep", seeds: str | int = 0) -> list[Trial]:
  """The trials of `sweep` in the experiment of `config_spec`, checked and uniquely named.

  Raises a ValueError naming the experiment file, the sweep or the trial at fault.
  """
  path, _ = split_spec(config_spec)
  module = experiment.load(path)
  sweep_fn = getattr(module, sweep, None)
  if not callable(sweep_fn):
    raise ValueError(f"{path} has no sweep function {sweep!r}")
  grid: list[dict[str, Any]] = []
  sweep_fn(lambda **overrides: grid.append(overrides))
  if not grid:
    raise ValueError(f"{path}:{sweep} added no trials")
  seeds = parse_seeds(seeds)
  if seeds:
    if any("seed" in o for o in grid):
      raise ValueError(f"{path}:{sweep} sets seed itself; drop --seeds")
    grid = [dict(o, seed=s) for o in grid for s in seeds]
  trials, names = [], {}
  for overrides in grid:
    trial = Trial(trial_name(overrides), overrides)
    if trial.name in names:
      raise ValueError(f"{path}:{sweep} adds trial {trial.name} twice "
                       f"({names[trial.name]} and {overrides})")
    names[trial.name] = overrides
    trials.append(dataclasses.replace(trial, config=build_config(module, config_spec, trial)))
  return trials


def describe(path: str) -> dict[str, Any]:
  """What the sweep records of its experiment file: its sha256, published `REFERENCES` and
  `SLURM` defaults, as JSON data (the report reads these and never imports the file)."""
  try:
    with open(path, "rb") as f:
      digest = hashlib.sha256(f.read()).hexdigest()
  except OSError as e:
    raise ValueError(f"no experiment file at {path!r}: {e.strerror}") from None
  module = experiment.load(path)
  data = {"references": list(getattr(module, "REFERENCES", [])),
          "slurm": dict(getattr(module, "SLURM", {}))}
  return {"file": path, "sha256": digest, **json.loads(json.dumps(data, default=str))}


def trial_dir(root: str, trial: Trial) -> str:
  return os.path.join(root, trial.name)
