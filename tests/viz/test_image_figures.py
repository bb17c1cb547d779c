"""Image attention figures: a panel per token with the map over its pixels, beta bars."""
from matplotlib.image import AxesImage
import numpy as np
import pytest

from attention_jax.viz.heatmaps import figure_to_rgba
from attention_jax.viz.images import make_image_figure

DPI = 40
H, W, SCALE = 12, 30, 4  # a 3 x 8 grid (ceil(12 / 4), ceil(30 / 4))
TOKENS = ["7", "3", "1", "</s>"]


def _inputs(rng, outputs=len(TOKENS)):
  image = rng.random((H, W)).astype(np.float32)
  maps = rng.dirichlet(np.ones(8 * 3), size=outputs).reshape(outputs, 8, 3).astype(np.float32)
  return image, maps


def test_each_token_has_its_map_over_the_pixels_it_summarises():
  image, maps = _inputs(np.random.default_rng(0))
  padded = np.concatenate([maps, np.zeros((2, 8, 3), np.float32)])  # extra rows: padding
  fig = make_image_figure(image, padded, TOKENS, scale=SCALE, dpi=DPI, title="t")
  assert len(fig.axes) == len(TOKENS)
  for ax, token, grid in zip(fig.axes, TOKENS, maps):
    base, overlay = ax.get_images()
    assert isinstance(overlay, AxesImage) and ax.get_title() == token
    np.testing.assert_array_equal(base.get_array(), image)
    np.testing.assert_array_equal(overlay.get_array(), grid.T)  # rows down, columns across
    assert overlay.get_extent() == [0, 8 * SCALE, 3 * SCALE, 0]  # cells of 4 x 4 pixels
    assert ax.get_xlim() == (0, W)  # the last column's cell overhangs the image: cut
    assert overlay.get_clim() == (0.0, pytest.approx(maps.max()))  # one scale per example
  assert figure_to_rgba(fig).shape[-1] == 4


def test_sentinel_betas_are_titles_and_bars():
  image, maps = _inputs(np.random.default_rng(1))
  betas = np.array([0.1, 0.2, 0.9, 0.5], np.float32)
  fig = make_image_figure(image, maps, TOKENS, scale=SCALE, betas=betas, dpi=DPI)
  assert len(fig.axes) == len(TOKENS) + 1
  assert fig.axes[2].get_title() == "1  \u03b2=0.90"
  heights = [bar.get_height() for bar in fig.axes[-1].patches]
  np.testing.assert_allclose(heights, betas)


@pytest.mark.parametrize("maps_shape,message", [
    ((4, 7, 3), r"of shape \(4, 7, 3\) do not fit 4 tokens .* \(need \[>= 4, 8, 3\]"),
    ((3, 8, 3), r"do not fit 4 tokens"),
])
def test_maps_that_do_not_fit_the_image_are_named(maps_shape, message):
  image = np.zeros((H, W), np.float32)
  with pytest.raises(ValueError, match=message):
    make_image_figure(image, np.zeros(maps_shape, np.float32), TOKENS, scale=SCALE)
