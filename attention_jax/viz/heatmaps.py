"""Attention heatmaps: NumPy weights in, PNG files out.

    fig = make_alignment_figure(weights [tgt_len, src_len], source_tokens, target_tokens)
    fig = make_heads_figure(weights [layers, heads, q_len, kv_len], query_tokens, key_tokens)
    plot_alignment(...) / plot_heads(...)        the same, written to a PNG file
    save_example_heatmaps(intermediates, ...)    one PNG per example and attention kind
    figure_to_rgba(fig) -> save_png(rgba, path)  one drawing for TensorBoard and the file

Figures are built with `matplotlib.figure.Figure` on an Agg canvas, never
through pyplot: no display is needed, no backend is switched for the caller,
and nothing piles up in pyplot's global figure list across evaluations.
Every file is written to a temporary name in its directory and renamed, so a
crash never leaves a half-written PNG. Weights are expected in [0, 1]; the
colour scale is fixed to [0, vmax] so that images from different steps compare.
"""
from __future__ import annotations

import io
import math
import os
import re
from typing import Any, Mapping, Sequence

import matplotlib.image
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
import numpy as np

from attention_jax.data import paths

DPI = 100
_MAX_LABELS = 60  # more tokens than this: label every k-th one so labels stay legible
_LAYER = re.compile(r"layer_(\d+)$")
_LEAF = "attention_weights"  # the name the models sow their weights under


def _tokens(tokens: Sequence[Any]) -> list[str]:
  # '$' starts matplotlib mathtext: a token such as '$5' would be typeset or fail to parse.
  return [str(t).replace("$", r"\$") for t in tokens]


def _fit(weights: np.ndarray, query_tokens: Sequence, key_tokens: Sequence, what: str,
         names: tuple[str, str] = ("query", "key")) -> np.ndarray:
  """`weights [..., q, k]` trimmed to the token lists (the rest is padding)."""
  q, k = len(query_tokens), len(key_tokens)
  if not (0 < q <= weights.shape[-2] and 0 < k <= weights.shape[-1]):
    raise ValueError(
        f"{what} of shape {weights.shape} does not fit {q} {names[0]} x {k} {names[1]} tokens "
        f"(need 1..{weights.shape[-2]}, 1..{weights.shape[-1]})")
  return weights[..., :q, :k]


def _array(weights: Any, ranks: tuple[int, ...], layout: str) -> np.ndarray:
  weights = np.asarray(weights, dtype=np.float32)
  if weights.ndim not in ranks:
    raise ValueError(f"attention weights must be {layout}; got shape {weights.shape}")
  return weights


def _font_size(n: int) -> float:
  return 8 if n <= 24 else 7 if n <= 40 else 6


def sparse_ticks(tokens: Sequence[str]) -> tuple[list[int], list[str]]:
  """Tick positions and labels: every token, or every k-th when there are too many to read."""
  step = max(1, math.ceil(len(tokens) / _MAX_LABELS))
  ticks = list(range(0, len(tokens), step))
  return ticks, [tokens[i] for i in ticks]


def _label(axes: np.ndarray, keys: list[str], queries: list[str]) -> None:
  """Key tokens on x, query tokens on y, for panels sharing their axes (or one panel)."""
  ax = axes.flat[0]
  for tokens, set_ticks in ((keys, ax.set_xticks), (queries, ax.set_yticks)):
    set_ticks(*sparse_ticks(tokens))
  rotation = 90 if max(map(len, keys)) > 2 else 0  # upright text for short tokens
  # Shared axes share ticks but not the label style: set it on every panel.
  for ax in axes.flat:
    ax.tick_params(axis="x", labelrotation=rotation, labelsize=_font_size(len(keys)), length=0)
    ax.tick_params(axis="y", labelsize=_font_size(len(queries)), length=0)


def _figure(width: float, height: float, dpi: float) -> Figure:
  fig = Figure(figsize=(width, height), dpi=dpi, layout="constrained")
  FigureCanvasAgg(fig)  # attaches itself as fig.canvas: figure_to_rgba can draw
  return fig


def make_alignment_figure(weights: Any, source_tokens: Sequence, target_tokens: Sequence,
                          title: str | None = None, *, vmax: float = 1.0,
                          dpi: float = DPI) -> Figure:
  """One heatmap: source tokens on x, output tokens on y, a colour bar.

  Args:
    weights: `[tgt_len, src_len]`; may be padded beyond the token lists.
    source_tokens: `src_len` labels (or fewer) for the columns.
    target_tokens: `tgt_len` labels (or fewer) for the rows; row t is the
      attention used to produce output t.
    title: optional figure title.
    vmax: top of the colour scale (bottom is 0).
    dpi: pixels per inch of the figure, its PNG and its RGBA array.
  """
  weights = _array(weights, (2,), "[tgt_len, src_len]")
  src, tgt = _tokens(source_tokens), _tokens(target_tokens)
  weights = _fit(weights, tgt, src, "alignment weights [tgt_len, src_len]",
                 ("target", "source"))
  fig = _figure(min(16.0, max(3.0, 1.6 + 0.22 * len(src))),
                min(16.0, max(2.5, 1.0 + 0.22 * len(tgt))), dpi)
  ax = fig.add_subplot()
  image = ax.imshow(weights, cmap="viridis", vmin=0.0, vmax=vmax, aspect="auto",
                    interpolation="nearest")
  _label(np.array([ax]), src, tgt)
  ax.set_xlabel("source")
  ax.set_ylabel("output")
  if title:
    ax.set_title(title, fontsize=9)
  fig.colorbar(image, ax=ax, shrink=0.9)
  return fig


def make_heads_figure(weights: Any, query_tokens: Sequence, key_tokens: Sequence,
                      title: str | None = None, *, vmax: float = 1.0,
                      dpi: float = DPI) -> Figure:
  """A grid of heatmaps: a row per layer, a panel per head, one colour scale.

  Args:
    weights: `[layers, heads, q_len, kv_len]` or `[heads, q_len, kv_len]`
      (one layer); may be padded beyond the token lists.
    query_tokens: labels of the rows (y axis) of each panel.
    key_tokens: labels of the columns (x axis) of each panel.
    title: optional figure title.
    vmax: top of the shared colour scale (bottom is 0).
    dpi: pixels per inch of the figure, its PNG and its RGBA array.

  Panels are titled `layer i head j`; `fig.axes` holds them row by row,
  then the colour bar.
  """
  weights = _array(weights, (3, 4), "[layers, heads, q_len, kv_len] or [heads, q_len, kv_len]")
  if weights.ndim == 3:
    weights = weights[None]  # [1, heads, q_len, kv_len]
  queries, keys = _tokens(query_tokens), _tokens(key_tokens)
  weights = _fit(weights, queries, keys, "attention weights [layers, heads, q_len, kv_len]")
  layers, heads = weights.shape[:2]
  panel = min(3.0, max(1.6, 0.9 + 0.13 * max(len(queries), len(keys))))
  fig = _figure(heads * panel + 1.0, layers * panel + (0.9 if title else 0.6), dpi)
  axes = fig.subplots(layers, heads, squeeze=False, sharex=True, sharey=True)
  for i in range(layers):
    for j in range(heads):
      image = axes[i, j].imshow(weights[i, j], cmap="viridis", vmin=0.0, vmax=vmax,
                                aspect="auto", interpolation="nearest")
      axes[i, j].set_title(f"layer {i} head {j}", fontsize=8)
  _label(axes, keys, queries)  # shared axes: tick labels show on the outer panels only
  if title:
    fig.suptitle(title, fontsize=10)
  fig.colorbar(image, ax=axes, shrink=0.8)
  return fig


def figure_to_rgba(fig: Figure) -> np.ndarray:
  """The figure as a uint8 `[height, width, 4]` array (TensorBoard: `[..., :3]`, HWC)."""
  canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
  canvas.draw()
  return np.array(canvas.buffer_rgba())  # a copy: the buffer is reused by the next draw


def rgba_to_png_bytes(rgba: np.ndarray) -> bytes:
  """A `figure_to_rgba` array as PNG bytes. Drawing a figure costs far more than encoding
  it, so whoever needs both the array and the file draws once and encodes the array."""
  buffer = io.BytesIO()
  matplotlib.image.imsave(buffer, rgba, format="png")
  return buffer.getvalue()


def figure_to_png_bytes(fig: Figure) -> bytes:
  """The figure as PNG bytes, pixel for pixel what `save_figure` writes."""
  return rgba_to_png_bytes(figure_to_rgba(fig))


def save_png(rgba: np.ndarray, path: str | os.PathLike) -> str:
  """Writes a `figure_to_rgba` array as a PNG at `path` atomically, creating directories;
  returns the path."""
  paths.atomic_write_bytes(path, rgba_to_png_bytes(rgba))
  return os.fspath(path)


def save_figure(fig: Figure, path: str | os.PathLike) -> str:
  """Writes `fig` as a PNG at `path` atomically, creating directories; returns the path."""
  return save_png(figure_to_rgba(fig), path)


def plot_alignment(weights: Any, source_tokens: Sequence, target_tokens: Sequence,
                   path: str | os.PathLike, title: str | None = None, **kwargs) -> str:
  """`make_alignment_figure(...)` written to `path` (PNG); returns the path."""
  fig = make_alignment_figure(weights, source_tokens, target_tokens, title, **kwargs)
  return save_figure(fig, path)


def plot_heads(weights: Any, query_tokens: Sequence, key_tokens: Sequence,
               path: str | os.PathLike, title: str | None = None, **kwargs) -> str:
  """`make_heads_figure(...)` written to `path` (PNG); returns the path."""
  return save_figure(make_heads_figure(weights, query_tokens, key_tokens, title, **kwargs), path)


def collect_attention(intermediates: Mapping, num_examples: int | None = None
                      ) -> dict[str, np.ndarray]:
  """The sown attention weights of a Flax `intermediates` collection, by kind.

  Args:
    intermediates: the collection (or the whole mutable state holding it
      under 'intermediates'): nested dicts whose leaves are tuples of arrays
      sown as 'attention_weights'. When a leaf holds several (the module ran
      more than once in one `apply`), the last is used.
    num_examples: keep only the first examples of the batch (sliced before
      the copy to host, so a big eval batch costs nothing extra).

  Returns:
    `{kind: weights}` sorted by kind. The kind joins the path's module names
    less the layer names (`layer_3`, or `layers` for `nn.scan`-ned stacks):
    'encoder_self_attention', 'decoder_self_attention',
    'decoder_cross_attention' hold `[layers, batch, heads, q_len, kv_len]`;
    an unlayered `[batch, tgt_len, src_len]` leaf (the RNN decoder's) is
    'alignment' (or its path's names).
  """
  if set(intermediates) == {"intermediates"}:
    intermediates = intermediates["intermediates"]
  alignments: dict[str, np.ndarray] = {}  # kind -> [batch, tgt_len, src_len]
  layered: dict[str, list] = {}  # kind -> [(layer index, [batch, heads, q_len, kv_len]), ...]
  batch = slice(num_examples)

  def walk(tree: Mapping, path: tuple[str, ...]) -> None:
    for key, value in tree.items():
      if isinstance(value, Mapping):
        walk(value, path + (str(key),))
      elif key == _LEAF:
        leaf = value[-1] if isinstance(value, (tuple, list)) else value
        add(path, leaf if hasattr(leaf, "ndim") else np.asarray(leaf))

  def add(path: tuple[str, ...], leaf: Any) -> None:
    names = [p for p in path if p != "layers" and not _LAYER.match(p)]
    kind = "_".join(names) or "alignment"
    layer = next((int(m.group(1)) for m in map(_LAYER.match, path) if m), -1)
    where = "/".join(path + (_LEAF,))
    if "layers" in path:  # nn.scan stacks the layers first: [layers, batch, ...]
      if leaf.ndim not in (4, 5):
        raise ValueError(f"{where} has shape {leaf.shape}; a scanned stack sows "
                         "[layers, batch, heads, q_len, kv_len]")
      stack = np.asarray(leaf[:, batch], np.float32)
      layered.setdefault(kind, []).extend((layer, s if s.ndim == 4 else s[:, None]) for s in stack)
    elif layer >= 0 or leaf.ndim == 4:
      if leaf.ndim not in (3, 4):
        raise ValueError(f"{where} has shape {leaf.shape}; expected [batch, heads, q_len, kv_len]")
      w = np.asarray(leaf[batch], np.float32)
      layered.setdefault(kind, []).append((layer, w if w.ndim == 4 else w[:, None]))
    elif leaf.ndim == 3:
      alignments[kind] = np.asarray(leaf[batch], np.float32)
    else:
      raise ValueError(f"{where} has shape {leaf.shape}; expected [batch, tgt_len, src_len] "
                       "or [batch, heads, q_len, kv_len]")

  walk(intermediates, ())
  if not alignments and not layered:
    raise ValueError("no 'attention_weights' in intermediates; was the model applied with "
                     "mutable=['intermediates']?")
  result = dict(alignments)
  for kind, entries in layered.items():
    entries.sort(key=lambda e: e[0])  # by layer; stable, so a scanned stack keeps its order
    result[kind] = np.stack([w for _, w in entries])  # [layers, batch, heads, q_len, kv_len]
  return dict(sorted(result.items()))


def example_figures(intermediates: Mapping, source_tokens: Sequence[Sequence] | None,
                    target_tokens: Sequence[Sequence], *,
                    decoder_input_tokens: Sequence[Sequence] | None = None,
                    num_examples: int | None = None, step: int | None = None,
                    prefix: str = "example", **kwargs) -> dict[str, Figure]:
  """`{file stem: Figure}` for each of the first examples and each attention kind.

  Args:
    intermediates: as for `collect_attention`.
    source_tokens: per example, the source token strings (unpadded); None for
      a decoder-only model.
    target_tokens: per example, the output token strings: row t of a map is
      the attention used to produce output t.
    decoder_input_tokens: per example, the labels of decoder self-attention
      keys (the shifted outputs, BOS first); default: `target_tokens`.
    num_examples: how many examples; default `len(target_tokens)`.
    step: training step, put in the titles.
    prefix: file stems are `{prefix}_{i}_{kind}`.
    **kwargs: `vmax`, `dpi` for the figures.

  Every figure is built (and so every shape checked) before any is returned.
  """
  n = len(target_tokens) if num_examples is None else num_examples
  attention = collect_attention(intermediates, n)
  figures = {}
  for kind, weights in attention.items():
    batch = weights.shape[0] if weights.ndim == 3 else weights.shape[1]
    lists = [len(t) for t in (source_tokens, target_tokens, decoder_input_tokens) if t is not None]
    if n > min([batch] + lists):
      raise ValueError(f"{n} examples asked for, but {kind} weights have shape {weights.shape} "
                       f"and the token lists hold {lists} examples")
    if source_tokens is None and ("cross" in kind or "encoder" in kind or weights.ndim == 3):
      raise ValueError(f"{kind} attends to the source: source_tokens are needed")
    for i in range(n):
      title = f"example {i}: {kind.replace('_', ' ')}" + ("" if step is None else f", step {step}")
      if weights.ndim == 3:  # [batch, tgt_len, src_len]
        fig = make_alignment_figure(weights[i], source_tokens[i], target_tokens[i], title,
                                    **kwargs)
      else:
        if "encoder" in kind:
          queries, keys = source_tokens[i], source_tokens[i]
        elif "cross" in kind:
          queries, keys = target_tokens[i], source_tokens[i]
        else:
          queries = target_tokens[i]
          keys = queries if decoder_input_tokens is None else decoder_input_tokens[i]
        fig = make_heads_figure(weights[:, i], queries, keys, title, **kwargs)
      figures[f"{prefix}_{i}_{kind}"] = fig
  return figures


def save_example_heatmaps(intermediates: Mapping, source_tokens: Sequence[Sequence] | None,
                          target_tokens: Sequence[Sequence], out_dir: str | os.PathLike,
                          **kwargs) -> list[str]:
  """Writes `example_figures(...)` as `out_dir/{prefix}_{i}_{kind}.png`; returns the paths.

  Kinds: 'alignment' (RNN decoder), 'encoder_self_attention',
  'decoder_self_attention', 'decoder_cross_attention' (a grid of layers x
  heads each). A shape mismatch raises before anything is written.
  """
  figures = example_figures(intermediates, source_tokens, target_tokens, **kwargs)
  return [save_figure(fig, os.path.join(out_dir, f"{stem}.png")) for stem, fig in figures.items()]
