"""Test-wide set-up and shared fixtures.

JAX's persistent compilation cache lives outside the clone (it survives a
fresh CI checkout on the same machine) and is keyed by the jax/jaxlib version
and the program, so it never serves a stale executable. Override its place
with JAX_COMPILATION_CACHE_DIR.
"""
import json
import os
import time

# Compiling, not running, is most of the suite's time: XLA's optimisation passes cost more
# than they save on tiny test programs (a cold smoke run: 57 -> 33 CPU-seconds). Set before
# jax is imported so that this process and every subprocess of the suite inherit it. Tests
# that compare bits with a recording made under the defaults turn it back off.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")

import jax  # pylint: disable=g-import-not-at-top
import numpy as np
import pytest

from attention_jax import compile_cache

_CACHE_DIR = os.environ.get("JAX_COMPILATION_CACHE_DIR", compile_cache.DEFAULT_DIR)
jax.config.update("jax_compilation_cache_dir", _CACHE_DIR)
# Test programs compile in well under a second each; cache them all.
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# float32 is checked against NumPy to ~1e-5, which a GPU's default matmul precision (TF32)
# misses by ~1e-3: on an H200, 66 of 165 attention tests failed so. A CPU has no such
# mode, so there nothing changes.
if jax.default_backend() != "cpu":
  jax.config.update("jax_default_matmul_precision", "highest")


@pytest.fixture
def xla_optimized():
  """XLA's optimisation passes back on, for a test whose time goes to running many steps."""
  before = jax.config.values["jax_disable_most_optimizations"]
  jax.config.update("jax_disable_most_optimizations", False)
  yield
  jax.config.update("jax_disable_most_optimizations", before)


def _numeric_grad(f, *args, eps=1e-6):
  """Central-difference gradients of a scalar NumPy function, in float64."""
  args = [np.array(a, dtype=np.float64) for a in args]
  grads = []
  for a in args:
    g = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
      old = a[idx]
      a[idx] = old + eps
      hi = f(*args)
      a[idx] = old - eps
      lo = f(*args)
      a[idx] = old
      g[idx] = (hi - lo) / (2 * eps)
    grads.append(g)
  return grads


@pytest.fixture
def numeric_grad():
  """`numeric_grad(f, *arrays)`: finite-difference gradients, the reference for jax.grad."""
  return _numeric_grad


def _wait_for(path, proc, timeout=300):
  """Until `path` exists (the run reached that point); fails if `proc` ends first."""
  deadline = time.monotonic() + timeout
  while not os.path.exists(path):
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    assert time.monotonic() < deadline, f"{path} never appeared"
    time.sleep(0.2)


@pytest.fixture
def wait_for():
  """`wait_for(path, process)`: polls for a file a subprocess writes (a checkpoint)."""
  return _wait_for


@pytest.fixture(scope="session")
def shared_data_dir(tmp_path_factory):
  """One data dir for every test that reads data sets without damaging them.

  Under pytest-xdist each worker's base temp is <session dir>/popen-gwN, so the
  session dir is shared: a data set is built once for the whole suite, not once
  per test (cmudict_g2p takes ~15 s). Concurrent first builds wait on the
  registry's build lock. Tests that damage data sets make their own dirs.
  """
  base = tmp_path_factory.getbasetemp()
  shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "shared_data"
  shared.mkdir(exist_ok=True)
  return str(shared)


@pytest.fixture(scope="session")
def spoken_digit_recordings(tmp_path_factory):
  """A manual dir of FSDD-like recordings: 0.1 s 8 kHz tones, one pitch per digit, 2
  speakers, indices 0-11 (0-4 test, 5-9 dev, 10-11 train); never the real recordings."""
  import soundfile  # pylint: disable=g-import-not-at-top
  directory = tmp_path_factory.mktemp("fsdd")
  t = np.arange(800) / 8000
  for digit in range(10):
    for s, speaker in enumerate(("alice", "bob")):
      for index in range(12):
        tone = (0.2 + 0.1 * s) * np.sin(2 * np.pi * (300 + 200 * digit) * t + index)
        soundfile.write(str(directory / f"{digit}_{speaker}_{index}.wav"), tone, 8000,
                        subtype="PCM_16")
  return str(directory)


@pytest.fixture
def prediction_sweep(tmp_path):
  """`write(seeds)`: a sweep root whose `model=soft` trial of seed i holds `seeds[i]` (dicts,
  as `predictions_test.jsonl` has them), with its `sweep.json`; returns the root."""
  def write(seeds):
    trials = {}
    for seed, examples in enumerate(seeds):
      name = f"model=soft,seed={seed}"
      (tmp_path / name).mkdir()
      (tmp_path / name / "predictions_test.jsonl").write_text(
          "".join(json.dumps(e) + "\n" for e in examples))
      trials[name] = {"overrides": {"model": "soft", "seed": seed}}
    (tmp_path / "sweep.json").write_text(json.dumps({"trials": trials}))
    return tmp_path
  return write


@pytest.fixture
def numpy_ema():
  """The parameters' moving average by the documented rule (`optim.params_ema`), in NumPy:
  start at p_0; step t (from 0) takes p_{t+1} with weight 1 - min(decay, (1 + t) / (10 + t)).
  Takes the trajectory [p_0, ..., p_n] of flat dicts and the decay."""
  def average(trajectory, decay):
    ema = {k: np.array(v, np.float64) for k, v in trajectory[0].items()}
    for t, params in enumerate(trajectory[1:]):
      keep = min(decay, (1 + t) / (10 + t))
      ema = {k: keep * ema[k] + (1 - keep) * np.asarray(params[k]) for k in ema}
    return ema
  return average
