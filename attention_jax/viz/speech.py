"""Speech figures: a log-mel spectrogram with the decoder's alignment and CTC spikes under it.

    fig = make_speech_figure(spectrogram [frames, mel], alignment [outputs, enc_frames],
                             output_tokens, ctc_posteriors [enc_frames, V])

Panels, top to bottom, on one time axis in seconds (frame * hop_ms / 1000):
the spectrogram; the attention of each output over the encoder frames, each
encoder frame drawn over the `subsampling` input frames it summarises; and,
when given, the CTC posteriors of every non-blank symbol that ever exceeds
`spike_threshold`, each peak above it marked with its symbol. Blank (index 0)
is drawn as a grey dashed line: where it dips is where the spikes are.
Built like `heatmaps` (a `Figure` on an Agg canvas, never pyplot), so
`heatmaps.figure_to_rgba` / `save_figure` work on it. No colour bars: they
would narrow one panel and break the shared time axis; the alignment's
colour scale is fixed to [0, 1].
"""
from __future__ import annotations

import math
from typing import Any, Sequence

from matplotlib.figure import Figure
import numpy as np

from attention_jax.viz.heatmaps import DPI, _figure, _font_size, _tokens, sparse_ticks


def _shown(tokens: Sequence[Any]) -> list[str]:
  # A space token would be an invisible label: show it as an open box.
  return [t.replace(" ", "\u2423") for t in _tokens(tokens)]


def _trim(array: Any, layout: str, need: tuple[int, int], context: str) -> np.ndarray:
  """`array` cut to its first `need` rows and columns (the rest is padding), or a
  ValueError naming the shapes when it is smaller."""
  array = np.asarray(array, dtype=np.float32)
  if array.ndim != 2 or not all(0 < n <= size for n, size in zip(need, array.shape)):
    raise ValueError(f"{layout} has shape {array.shape}; need at least {need[0]} x {need[1]} "
                     f"({context})")
  return array[:need[0], :need[1]]


def _draw_alignment(ax, alignment: np.ndarray, tokens: list[str], subsampling: int,
                    hop_s: float) -> None:
  """Rows = outputs (first on top), each encoder frame repeated over its input frames."""
  image = np.repeat(alignment, subsampling, axis=1)
  ax.imshow(image, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest",
            extent=(0.0, image.shape[1] * hop_s, len(tokens) - 0.5, -0.5))
  ax.set_yticks(*sparse_ticks(tokens))
  ax.tick_params(axis="y", labelsize=_font_size(len(tokens)), length=0)
  ax.set_ylabel("output")


def spike_symbols(posteriors: np.ndarray, threshold: float) -> list[int]:
  """Indices of the non-blank symbols (blank = 0) whose posterior ever exceeds `threshold`
  in `posteriors [enc_frames, V]`."""
  peaks = posteriors.max(axis=0)
  return [v for v in range(1, len(peaks)) if peaks[v] > threshold]


def _draw_spikes(ax, posteriors: np.ndarray, labels: list[str], subsampling: int,
                 hop_s: float, threshold: float) -> None:
  """One line per spiking symbol at encoder-frame centres, its peaks marked with its label."""
  times = (np.arange(posteriors.shape[0]) + 0.5) * subsampling * hop_s
  ax.plot(times, posteriors[:, 0], color="0.6", linestyle="--", linewidth=0.8, label=labels[0])
  for v in spike_symbols(posteriors, threshold):
    p = posteriors[:, v]
    (line,) = ax.plot(times, p, linewidth=1.0, label=labels[v])
    # A peak: above threshold and no lower than its neighbours (edges padded with 0).
    padded = np.pad(p, 1)
    for i in np.flatnonzero((p > threshold) & (p >= padded[:-2]) & (p >= padded[2:])):
      ax.text(times[i], p[i], labels[v], color=line.get_color(), fontsize=7,
              ha="center", va="bottom")
  ax.set_ylim(0.0, 1.15)  # room for the peak labels
  ax.set_ylabel("CTC")


def _ctc(posteriors: Any, labels: Sequence[str] | None, enc_frames: int,
         context: str) -> tuple[np.ndarray, list[str]]:
  """`[enc_frames, V]` posteriors (trimmed) and their `V` labels."""
  posteriors = np.asarray(posteriors, dtype=np.float32)
  vocab = (posteriors.shape[-1] if posteriors.ndim else 0) if labels is None else len(labels)
  posteriors = _trim(posteriors, "ctc_posteriors [enc_frames, V]", (enc_frames, vocab),
                     f"{vocab} ctc labels, {context}")
  return posteriors, _shown(map(str, range(vocab)) if labels is None else labels)


def make_speech_figure(spectrogram: Any, alignment: Any, output_tokens: Sequence,
                       ctc_posteriors: Any = None, *, subsampling: int = 4,
                       ctc_labels: Sequence[str] | None = None, title: str = "",
                       hop_ms: float = 10, spike_threshold: float = 0.5,
                       dpi: float = DPI) -> Figure:
  """The spectrogram, the alignment under it and, optionally, the CTC spikes under that.

  Args:
    spectrogram: `[frames, mel]` log-mel features (normalised), unpadded.
    alignment: `[num_outputs, enc_frames]` attention of each output over the
      encoder frames; may be padded beyond `len(output_tokens)` rows and
      `ceil(frames / subsampling)` columns, which are what is drawn.
    output_tokens: labels of the alignment rows (a space shows as '\u2423').
    ctc_posteriors: `[enc_frames, V]` CTC probabilities (padded frames allowed),
      blank at index 0.
    subsampling: input frames per encoder frame.
    ctc_labels: `V` symbol names (or fewer: extra columns are dropped);
      default: the indices.
    title: figure title.
    hop_ms: milliseconds between spectrogram frames.
    spike_threshold: a non-blank symbol is drawn if its posterior ever exceeds this.
    dpi: pixels per inch.

  `fig.axes` holds the panels top to bottom (2 or 3, no colour bars).
  """
  spectrogram = np.asarray(spectrogram, dtype=np.float32)
  if spectrogram.ndim != 2 or 0 in spectrogram.shape or subsampling < 1:
    raise ValueError(f"spectrogram must be [frames, mel] and subsampling >= 1; got shape "
                     f"{spectrogram.shape}, subsampling {subsampling}")
  frames, enc_frames = spectrogram.shape[0], math.ceil(spectrogram.shape[0] / subsampling)
  context = f"spectrogram {spectrogram.shape}, subsampling {subsampling}"
  tokens = _shown(output_tokens)
  alignment = _trim(alignment, "alignment [num_outputs, enc_frames]",
                    (len(tokens), enc_frames), f"{len(tokens)} output tokens, {context}")
  if ctc_posteriors is not None:
    ctc, labels = _ctc(ctc_posteriors, ctc_labels, enc_frames, context)
  hop_s, panels = hop_ms / 1000, 2 if ctc_posteriors is None else 3
  align_height = min(6.0, max(1.2, 0.14 * len(tokens)))
  heights = [2.0, align_height, 1.6][:panels]
  fig = _figure(min(16.0, max(6.0, 2.0 + 0.03 * frames)), sum(heights) + 0.8, dpi)
  axes = fig.subplots(panels, 1, sharex=True, gridspec_kw={"height_ratios": heights})
  axes[0].imshow(spectrogram.T, cmap="magma", origin="lower", aspect="auto",
                 interpolation="nearest", extent=(0.0, frames * hop_s, 0, spectrogram.shape[1]))
  axes[0].set_ylabel("mel bin")
  _draw_alignment(axes[1], alignment, tokens, subsampling, hop_s)
  if ctc_posteriors is not None:
    _draw_spikes(axes[2], ctc, labels, subsampling, hop_s, spike_threshold)
  axes[-1].set_xlim(0.0, frames * hop_s)  # the last encoder frame may overhang the audio
  axes[-1].set_xlabel("time (s)")
  if title:
    fig.suptitle(title, fontsize=10)
  return fig
