"""Show, Attend and Tell's figure: an image with each output token's attention overlaid.

    fig = make_image_figure(image [H, W], maps [num_outputs, W', H'], output_tokens,
                            scale=2**stages, betas=None)

One panel per output token (EOS included), left to right and wrapping into rows: the
grey image with the token's attention over the feature grid drawn on it, each grid cell
over the `scale` x `scale` pixels it summarises (bilinear between cell centres, as Xu
et al. upsampled theirs), the colour scale fixed to [0, max weight of the example] so the
panels of one example compare. With `betas` (the visual sentinel's weight per token) each
panel's title gives beta_t and a bar row under the panels shows them all: a high bar is a
token the model took from its language model rather than the image (Lu et al. 2017).
Built like `heatmaps` (a Figure on an Agg canvas), so `heatmaps.save_figure` and
`figure_to_rgba` work on it.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from matplotlib.figure import Figure
import numpy as np

from attention_jax.viz.heatmaps import DPI, _figure, _tokens

MAX_COLUMNS = 8  # panels per row


def _check(image: np.ndarray, maps: np.ndarray, tokens: list[str], scale: int) -> np.ndarray:
  """`maps` trimmed to the tokens, or a ValueError naming the shapes."""
  if image.ndim != 2 or 0 in image.shape or scale < 1:
    raise ValueError(f"image must be [height, width] and scale >= 1; got shape {image.shape}, "
                     f"scale {scale}")
  need = (math.ceil(image.shape[1] / scale), math.ceil(image.shape[0] / scale))
  if maps.ndim != 3 or maps.shape[0] < len(tokens) or maps.shape[1:] != need or not tokens:
    raise ValueError(f"attention maps [num_outputs, W', H'] of shape {maps.shape} do not fit "
                     f"{len(tokens)} tokens over a {image.shape} image at scale {scale} "
                     f"(need [>= {len(tokens)}, {need[0]}, {need[1]}])")
  return maps[:len(tokens)]


def make_image_figure(image: Any, maps: Any, output_tokens: Sequence, *, scale: int,
                      betas: Any = None, title: str = "", dpi: float = DPI) -> Figure:
  """The image once per output token with that token's attention map over it.

  Args:
    image: `[height, width]` pixels (any range; drawn grey, black = 0), unpadded.
    maps: `[num_outputs, W', H']` attention over the grid (W' = ceil(width / scale) columns,
      H' rows), at least `len(output_tokens)` rows; the rest is padding.
    output_tokens: the panel titles.
    scale: pixels per grid cell along each axis (2 ** CNN stages).
    betas: optional `[num_outputs]` sentinel weights (Lu et al.), drawn as bars.
    title: figure title.
  """
  image = np.asarray(image, np.float32)
  tokens = _tokens(output_tokens)
  maps = _check(image, np.asarray(maps, np.float32), tokens, scale)
  height, width = image.shape
  columns = min(len(tokens), MAX_COLUMNS)
  rows = math.ceil(len(tokens) / columns)
  panel_w, panel_h = 1.8 * width / max(width, height), 1.8 * height / max(width, height)
  bars = betas is not None
  fig = _figure(max(4.0, columns * panel_w + 0.4), rows * (panel_h + 0.4) + 0.6 + bars, dpi)
  grid = fig.add_gridspec(rows + bars, columns, height_ratios=[panel_h] * rows + [1.0] * bars)
  vmax = max(float(maps.max()), 1e-6)
  cells_h, cells_w = maps.shape[2] * scale, maps.shape[1] * scale
  for i, token in enumerate(tokens):
    ax = fig.add_subplot(grid[i // columns, i % columns])
    ax.imshow(image, cmap="gray", interpolation="nearest", extent=(0, width, height, 0))
    ax.imshow(maps[i].T, cmap="inferno", alpha=0.6, vmin=0.0, vmax=vmax,
              interpolation="bilinear", extent=(0, cells_w, cells_h, 0))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    label = token if not bars else f"{token}  \u03b2={float(betas[i]):.2f}"
    ax.set_title(label, fontsize=8)
  if bars:
    _draw_betas(fig.add_subplot(grid[rows, :]), np.asarray(betas, np.float32), tokens)
  if title:
    fig.suptitle(title, fontsize=10)
  return fig


def _draw_betas(ax, betas: np.ndarray, tokens: list[str]) -> None:
  """beta_t per token: the sentinel's share of the context."""
  ax.bar(np.arange(len(tokens)), betas[:len(tokens)], color="tab:blue")
  ax.set_xticks(np.arange(len(tokens)), tokens, fontsize=7)
  ax.set_ylim(0.0, 1.0)
  ax.set_ylabel("\u03b2 (sentinel)", fontsize=8)
