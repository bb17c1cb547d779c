"""Attention heatmaps: valid, non-blank PNGs, the right panels and values, clean failures."""
import os

import jax
import jax.numpy as jnp
import matplotlib.image
import numpy as np
import pytest

from attention_jax import viz
from attention_jax.models.registry import build_model

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DPI = 60  # small images keep the tests fast
SOURCE = [["h", "e", "l", "l", "o"], ["$5", "a", "b"]]  # '$' would start mathtext unescaped
TARGET = [["HH", "AH0", "L", "OW1", "</s>"], ["F", "AY1", "V", "</s>"]]
MODELS = {
    "rnn": dict(name="rnn_seq2seq", vocab_size=9, attention="luong", score="dot", cell="gru",
                hidden_dim=16, src_embed_dim=8, tgt_embed_dim=8),
    "transformer": dict(name="transformer", vocab_size=9, d_model=16, num_heads=2, d_ff=32,
                        num_layers=2, max_len=16, dropout_rate=0.0),
}
MODELS["transformer_scan"] = dict(MODELS["transformer"], scan_layers=True)
KINDS = {
    "rnn": ["alignment"],
    "transformer": ["decoder_cross_attention", "decoder_self_attention", "encoder_self_attention"],
}
KINDS["transformer_scan"] = KINDS["transformer"]


def _weights(rng, *shape):
  """Rows that sum to one over the last axis, like softmax outputs."""
  return rng.dirichlet(np.ones(shape[-1]), size=shape[:-1]).astype(np.float32)


def _check_png(path):
  with open(path, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
  image = matplotlib.image.imread(path)  # [height, width, 4] floats
  assert image.ndim == 3 and image.shape[2] in (3, 4)
  assert image[..., :3].var() > 0, f"{path} is blank"
  return image


def _panels(fig):
  return [ax.get_title() for ax in fig.axes if ax.get_title()]


@pytest.fixture(scope="module")
def sown():
  """`{model: intermediates}` of tiny real models on a padded batch of 2."""
  inputs = jnp.array([[3, 4, 5, 6, 7, 0], [6, 7, 8, 0, 0, 0]])  # [batch, src_len], padded
  lengths = jnp.array([5, 3])
  targets_in = jnp.array([[1, 3, 4, 5, 6, 0], [1, 5, 6, 7, 0, 0]])  # [batch, tgt_len]
  rng, result = np.random.default_rng(0), {}
  for name, config in MODELS.items():
    model = build_model(config)
    # Random parameters of the right shapes: compiling `init` (its RNG) costs seconds per model.
    shapes = jax.eval_shape(model.init, jax.random.key(0), inputs, lengths, targets_in)
    variables = jax.tree.map(lambda s: rng.normal(0, 0.5, s.shape).astype(s.dtype), shapes)
    apply = jax.jit(lambda v, *args: model.apply(v, *args, mutable=["intermediates"]))
    _, state = apply(variables, inputs, lengths, targets_in)
    result[name] = state["intermediates"]
  return result


def test_alignment_png_is_valid_trimmed_and_matches_the_tensorboard_image(tmp_path):
  rng = np.random.default_rng(0)
  weights = _weights(rng, 7, 9)  # [tgt_len, src_len], padded beyond the tokens
  source, target = ["a", "bb", "$x", "d"], ["p", "q", "r"]
  fig = viz.make_alignment_figure(weights, source, target, title="t", dpi=DPI)
  np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), weights[:3, :4])
  assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["a", "bb", r"\$x", "d"]
  assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == target
  assert fig.axes[0].images[0].get_clim() == (0.0, 1.0)
  assert len(fig.axes) == 2  # the map and its colour bar

  path = viz.plot_alignment(weights, source, target, tmp_path / "sub" / "a.png", dpi=DPI)
  image = _check_png(path)
  rgba = viz.figure_to_rgba(fig)
  assert rgba.dtype == np.uint8 and rgba.shape == image.shape[:2] + (4,)
  assert rgba[..., :3].var() > 0
  saved = viz.save_figure(fig, tmp_path / "b.png")
  with open(saved, "rb") as f:
    assert viz.figure_to_png_bytes(fig) == f.read()
  # The evaluator draws once: the file holds the very pixels TensorBoard is given.
  from_array = viz.save_png(rgba, tmp_path / "c.png")
  np.testing.assert_array_equal(np.round(matplotlib.image.imread(from_array) * 255), rgba)
  assert sorted(os.listdir(tmp_path)) == ["b.png", "c.png", "sub"]  # no temporary files left


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (3, 4, 5)])
def test_heads_grid_has_a_panel_per_layer_and_head_on_one_scale(tmp_path, shape):
  weights = _weights(np.random.default_rng(1), *shape)
  layers, heads = (1,) + shape[:1] if len(shape) == 3 else shape[:2]
  fig = viz.make_heads_figure(weights, list("abcd"), list("vwxyz"), title="grid", dpi=DPI)
  assert _panels(fig) == [f"layer {i} head {j}" for i in range(layers) for j in range(heads)]
  assert len(fig.axes) == layers * heads + 1  # and one shared colour bar
  grid = weights.reshape(layers, heads, 4, 5)
  for n, ax in enumerate(fig.axes[:-1]):
    np.testing.assert_array_equal(ax.images[0].get_array(), grid[n // heads, n % heads])
    assert ax.images[0].get_clim() == (0.0, 1.0)
  _check_png(viz.plot_heads(weights, list("abcd"), list("vwxyz"), tmp_path / "h.png", dpi=DPI))


@pytest.mark.parametrize("call, shape", [
    (lambda p: viz.plot_alignment(np.zeros((3, 4, 5)), ["a"], ["b"], p), r"\(3, 4, 5\)"),
    (lambda p: viz.plot_alignment(np.zeros((3, 4)), list("abcde"), ["b"], p), r"\(3, 4\)"),
    (lambda p: viz.plot_alignment(np.zeros((3, 4)), [], ["b"], p), r"\(3, 4\)"),
    (lambda p: viz.plot_heads(np.zeros((2, 3)), ["a"], ["b"], p), r"\(2, 3\)"),
    (lambda p: viz.plot_heads(np.zeros((1, 2, 3, 4)), list("abcd"), ["b"], p), r"\(1, 2, 3, 4\)"),
])
def test_bad_shapes_name_the_shape_and_write_nothing(tmp_path, call, shape):
  with pytest.raises(ValueError, match=shape):
    call(tmp_path / "out" / "x.png")
  assert os.listdir(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
  path = tmp_path / "a.png"
  path.write_bytes(b"old")

  def broken_imsave(f, *args, **kwargs):
    f.write(PNG_SIGNATURE)  # a crash half-way through the write
    raise OSError("disk full")

  monkeypatch.setattr(matplotlib.image, "imsave", broken_imsave)
  with pytest.raises(OSError, match="disk full"):
    viz.plot_alignment(np.eye(2), ["a", "b"], ["c", "d"], path, dpi=DPI)
  assert os.listdir(tmp_path) == ["a.png"] and path.read_bytes() == b"old"


@pytest.mark.parametrize("model", sorted(MODELS))
def test_example_heatmaps_from_real_sown_weights(tmp_path, sown, model):
  out_dir = tmp_path / "attention" / "step_10"
  paths = viz.save_example_heatmaps(sown[model], SOURCE, TARGET, out_dir, step=10, dpi=DPI)
  expected = [f"example_{i}_{kind}.png" for kind in KINDS[model] for i in range(2)]
  assert sorted(os.listdir(out_dir)) == sorted(expected)
  assert sorted(paths) == sorted(str(out_dir / name) for name in expected)
  for path in paths:
    _check_png(path)


@pytest.mark.parametrize("model", ["transformer", "transformer_scan"])
def test_transformer_grids_show_each_layer_and_head_of_each_example(sown, model):
  attention = viz.collect_attention(sown[model])
  assert {k: v.shape for k, v in attention.items()} == {  # [layers, batch, heads, q, kv]
      "decoder_cross_attention": (2, 2, 2, 6, 6),
      "decoder_self_attention": (2, 2, 2, 6, 6),
      "encoder_self_attention": (2, 2, 2, 6, 6),
  }
  decoder_inputs = [["<s>"] + t[:-1] for t in TARGET]
  figures = viz.example_figures(sown[model], SOURCE, TARGET, decoder_input_tokens=decoder_inputs,
                                num_examples=2, dpi=DPI)
  for i in range(2):
    src, tgt = len(SOURCE[i]), len(TARGET[i])
    cross = figures[f"example_{i}_decoder_cross_attention"]
    assert _panels(cross) == ["layer 0 head 0", "layer 0 head 1", "layer 1 head 0",
                              "layer 1 head 1"]
    np.testing.assert_array_equal(cross.axes[3].images[0].get_array(),
                                  attention["decoder_cross_attention"][1, i, 1, :tgt, :src])
    encoder = figures[f"example_{i}_encoder_self_attention"].axes[0]
    assert encoder.images[0].get_array().shape == (src, src)
    decoder = figures[f"example_{i}_decoder_self_attention"].axes[2]  # bottom row: x labels
    assert [t.get_text() for t in decoder.get_xticklabels()] == decoder_inputs[i]


def test_rnn_alignment_figure_shows_the_sown_weights(sown):
  weights = np.asarray(sown["rnn"]["attention_weights"][0])  # [batch, tgt_len, src_len]
  figures = viz.example_figures({"intermediates": sown["rnn"]}, SOURCE, TARGET, num_examples=1,
                                dpi=DPI)
  assert list(figures) == ["example_0_alignment"]
  np.testing.assert_array_equal(figures["example_0_alignment"].axes[0].images[0].get_array(),
                                weights[0, :5, :5])


def test_example_errors_are_clear_and_write_nothing(tmp_path, sown):
  out_dir = tmp_path / "out"
  too_long = [SOURCE[0], SOURCE[1] + ["c", "d", "e", "f"]]  # 7 source tokens, 6 positions
  with pytest.raises(ValueError, match=r"shape \(2, 2, 6, 6\)"):
    viz.save_example_heatmaps(sown["transformer"], too_long, TARGET, out_dir)
  with pytest.raises(ValueError, match=r"3 examples asked for.*shape \(2, 6, 6\)"):
    viz.save_example_heatmaps(sown["rnn"], SOURCE * 2, TARGET * 2, out_dir, num_examples=3)
  with pytest.raises(ValueError, match="source_tokens are needed"):
    viz.save_example_heatmaps(sown["rnn"], None, TARGET, out_dir)
  with pytest.raises(ValueError, match="no 'attention_weights'"):
    viz.save_example_heatmaps({"encoder": {}}, SOURCE, TARGET, out_dir)
  bad = {"decoder": {"layers": {"cross_attention": {"attention_weights": (np.zeros((2, 3)),)}}}}
  with pytest.raises(ValueError, match=r"decoder/layers/cross_attention/attention_weights "
                                       r"has shape \(2, 3\)"):
    viz.save_example_heatmaps(bad, SOURCE, TARGET, out_dir)
  assert os.listdir(tmp_path) == []
