"""Speech figures: the panels, the alignment's pixels, the CTC spikes, clean failures."""
from matplotlib.image import AxesImage
import numpy as np
import pytest

from attention_jax.viz.heatmaps import figure_to_rgba
from attention_jax.viz.speech import make_speech_figure, spike_symbols

DPI = 40  # small images keep the tests fast
FRAMES, MEL, SUB = 37, 20, 4
ENC = 10  # ceil(37 / 4)
TOKENS = list("one two") + ["</s>"]
LABELS = ["<b>", " ", "e", "n", "o", "t", "w"]


def _inputs(rng, outputs=len(TOKENS), enc=ENC):
  spectrogram = rng.normal(size=(FRAMES, MEL)).astype(np.float32)
  alignment = rng.dirichlet(np.ones(enc), size=outputs).astype(np.float32)
  return spectrogram, alignment


def _ctc(enc=ENC):
  """Blank everywhere but three spikes: 'o' (4) at 2, 'n' (3) at 5, 't' (5) at 8 (but 0.4)."""
  posteriors = np.full((enc, len(LABELS)), 0.01, np.float32)
  posteriors[:, 0] = 0.94
  for frame, symbol, p in ((2, 4, 0.9), (5, 3, 0.8), (8, 5, 0.4)):
    posteriors[frame] = (1 - p) / (len(LABELS) - 1)
    posteriors[frame, symbol] = p
  return posteriors


def test_two_or_three_panels_on_one_time_axis():
  spectrogram, alignment = _inputs(np.random.default_rng(0))
  fig = make_speech_figure(spectrogram, alignment, TOKENS, dpi=DPI, title="t")
  assert len(fig.axes) == 2
  fig = make_speech_figure(spectrogram, alignment, TOKENS, _ctc(), ctc_labels=LABELS, dpi=DPI)
  assert len(fig.axes) == 3
  for ax in fig.axes:  # seconds: 37 frames of 10 ms
    assert ax.get_xlim() == pytest.approx((0.0, 0.37))
  spec_image = fig.axes[0].get_images()[0]
  np.testing.assert_array_equal(spec_image.get_array(), spectrogram.T)
  assert spec_image.origin == "lower"


def test_alignment_image_is_the_repeated_trimmed_alignment():
  # Padded to 12 outputs x 16 encoder frames: drawn are 8 x ceil(37 / 4) = 10.
  spectrogram, alignment = _inputs(np.random.default_rng(1), outputs=12, enc=16)
  fig = make_speech_figure(spectrogram, alignment, TOKENS, subsampling=SUB, hop_ms=20, dpi=DPI)
  (image,) = [im for im in fig.axes[1].get_images() if isinstance(im, AxesImage)]
  expected = np.repeat(alignment[:len(TOKENS), :ENC], SUB, axis=1)
  np.testing.assert_array_equal(np.asarray(image.get_array()), expected)
  assert image.get_extent()[:2] == pytest.approx((0.0, ENC * SUB * 0.02))
  labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
  assert labels == ["o", "n", "e", "\u2423", "t", "w", "o", "</s>"]  # the space is visible


def test_many_outputs_label_every_kth():
  spectrogram = np.zeros((400, 8))
  tokens = [f"t{i}" for i in range(130)]
  fig = make_speech_figure(spectrogram, np.full((130, 100), 0.01), tokens, dpi=DPI)
  labels = [t.get_text() for t in fig.axes[1].get_yticklabels()]
  assert labels == tokens[::3]


def test_spikes_panel_draws_the_symbols_above_threshold():
  spectrogram, alignment = _inputs(np.random.default_rng(2))
  posteriors = np.concatenate([_ctc(), np.zeros((3, len(LABELS)))])  # padded frames
  assert spike_symbols(_ctc(), 0.5) == [3, 4]
  fig = make_speech_figure(spectrogram, alignment, TOKENS, posteriors, ctc_labels=LABELS,
                           dpi=DPI)
  lines = fig.axes[2].get_lines()
  assert [line.get_label() for line in lines] == ["<b>", "n", "o"]  # blank first, dashed
  assert lines[0].get_linestyle() == "--"
  np.testing.assert_allclose(lines[2].get_ydata(), _ctc()[:, 4])
  # Encoder frame centres, in seconds.
  np.testing.assert_allclose(lines[2].get_xdata(), (np.arange(ENC) + 0.5) * SUB * 0.01)
  assert sorted(t.get_text() for t in fig.axes[2].texts) == ["n", "o"]  # one mark per peak
  # A lower threshold lets 't' in; without labels the symbols are named by index.
  fig = make_speech_figure(spectrogram, alignment, TOKENS, posteriors, spike_threshold=0.3,
                           dpi=DPI)
  assert [line.get_label() for line in fig.axes[2].get_lines()] == ["0", "3", "4", "5"]


@pytest.mark.parametrize("change, message", [
    (dict(alignment=np.ones((8, 9))), r"alignment \[num_outputs, enc_frames\] has shape \(8, 9\); "
                                      r"need at least 8 x 10 .*spectrogram \(37, 20\)"),
    (dict(alignment=np.ones((7, 10))), r"shape \(7, 10\); need at least 8 x 10"),
    (dict(alignment=np.ones(10)), r"has shape \(10,\)"),
    (dict(ctc_posteriors=np.ones((9, 7))), r"ctc_posteriors \[enc_frames, V\] has shape \(9, 7\)"),
    (dict(ctc_posteriors=np.ones((10, 6))), r"shape \(10, 6\); need at least 10 x 7 \(7 ctc"),
    (dict(spectrogram=np.ones(37)), r"\[frames, mel\].*got shape \(37,\)"),
    (dict(subsampling=0), r"subsampling 0"),
])
def test_wrong_shapes_name_them(change, message):
  spectrogram, alignment = _inputs(np.random.default_rng(3))
  args = dict(spectrogram=spectrogram, alignment=alignment, output_tokens=TOKENS,
              ctc_posteriors=_ctc(), ctc_labels=LABELS)
  with pytest.raises(ValueError, match=message):
    make_speech_figure(**{**args, **change}, dpi=DPI)


def test_figure_to_rgba():
  spectrogram, alignment = _inputs(np.random.default_rng(4))
  fig = make_speech_figure(spectrogram, alignment, TOKENS, _ctc(), ctc_labels=LABELS, dpi=DPI)
  rgba = figure_to_rgba(fig)
  width, height = fig.get_size_inches() * DPI
  assert rgba.dtype == np.uint8 and rgba.shape == (round(height), round(width), 4)
  assert rgba[..., :3].std() > 10  # not blank
