"""Scanned recurrent layers: cells equal flax's, hand-run scans, padding, stacking."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.layers import recurrent

B, T, DIN, H = 3, 6, 5, 8
LENGTHS = np.array([6, 3, 1], np.int32)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _np_step(cell, params, carry, x):
  """One NumPy step of our cell layout: params {'input': {kernel, bias}, 'cell': {...}}."""
  xp = x @ params["input"]["kernel"] + params["input"]["bias"]
  kernel = params["cell"]["kernel"]
  if cell == "gru":
    x_r, x_z, x_n = np.split(xp, 3)
    h_r, h_z, h_n = np.split(carry @ kernel, 3)
    r, z = _sigmoid(x_r + h_r), _sigmoid(x_z + h_z)
    n = np.tanh(x_n + r * (h_n + params["cell"]["bias_hn"]))
    h = (1 - z) * n + z * carry
    return h, h
  c, h = carry
  i, f, g, o = np.split(xp + h @ kernel, 4)
  c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
  h = _sigmoid(o) * np.tanh(c)
  return (c, h), h


def _np_scan(cell, params, xs):
  """A plain loop over the real steps `xs [time, d_in]`: outputs and final carry."""
  carry = np.zeros(H) if cell == "gru" else (np.zeros(H), np.zeros(H))
  outs = []
  for x in xs:
    carry, h = _np_step(cell, params, carry, x)
    outs.append(h)
  return np.stack(outs), carry


def _params(variables):
  return jax.tree.map(lambda x: np.asarray(x, np.float64), nn.unbox(variables)["params"])


def _randomize(variables, seed):
  """Non-zero biases everywhere, so every term of the cell is exercised."""
  leaves, tree = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


def _inputs(seed=0, time=T):
  return np.random.default_rng(seed).normal(size=(B, time, DIN)).astype(np.float32)


def test_reverse_within_length():
  x = jnp.arange(10).reshape(2, 5)
  out = recurrent.reverse_within_length(x, jnp.array([5, 3]))
  np.testing.assert_array_equal(out, [[4, 3, 2, 1, 0], [7, 6, 5, 8, 9]])


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_split_cell_equals_flax_cell(cell):
  """Input projection + recurrent step == nn.GRUCell / nn.OptimizedLSTMCell, same weights."""
  x = jnp.asarray(_inputs()[:, 0])  # [batch, d_in]
  flax_cell = nn.GRUCell(H) if cell == "gru" else nn.OptimizedLSTMCell(H)
  carry = jax.tree.map(lambda c: c + 0.5, flax_cell.initialize_carry(jax.random.key(0), x.shape))
  fp = _randomize(flax_cell.init(jax.random.key(1), carry, x), 2)["params"]
  expected_carry, expected = flax_cell.apply({"params": fp}, carry, x)

  cat = lambda names, leaf: jnp.concatenate([fp[n][leaf] for n in names], axis=-1)
  if cell == "gru":
    ours = {"input": {"kernel": cat(["ir", "iz", "in"], "kernel"),
                      "bias": cat(["ir", "iz", "in"], "bias")},
            "cell": {"kernel": cat(["hr", "hz", "hn"], "kernel"), "bias_hn": fp["hn"]["bias"]}}
  else:
    ours = {"input": {"kernel": cat(["ii", "if", "ig", "io"], "kernel"),
                      "bias": cat(["hi", "hf", "hg", "ho"], "bias")},
            "cell": {"kernel": cat(["hi", "hf", "hg", "ho"], "kernel")}}
  proj = recurrent.input_projection(cell, H, jnp.float32, jnp.float32)
  step = recurrent.make_step(cell, H, jnp.float32, jnp.float32)
  got_carry, got = step.apply({"params": ours["cell"]}, carry,
                              proj.apply({"params": ours["input"]}, x))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               got_carry, expected_carry)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_bidirectional_encoder_equals_two_scans_by_hand(cell):
  x = _inputs(1)
  enc = recurrent.RNNEncoder(cell, H, num_layers=1, bidirectional=True)
  variables = _randomize(enc.lazy_init(jax.random.key(0), x, LENGTHS), 3)
  out, finals = jax.jit(enc.apply)(variables, x, LENGTHS)
  assert out.shape == (B, T, 2 * H)
  p = _params(variables)
  for b, n in enumerate(LENGTHS):
    fwd, fwd_final = _np_scan(cell, p["layer_0"], x[b, :n])
    bwd, bwd_final = _np_scan(cell, p["layer_0_backward"], x[b, :n][::-1])
    expected = np.concatenate([fwd, bwd[::-1]], axis=-1)  # backward re-aligned to positions
    np.testing.assert_allclose(out[b, :n], expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(out[b, n:], 0.0)
    expected_final = jax.tree.map(lambda f, g: np.concatenate([f, g]), fwd_final, bwd_final)
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a[b], e, rtol=1e-5, atol=1e-5),
                 finals[0], expected_final)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_padding_changes_no_real_output_nor_the_final_state(cell):
  x = _inputs(2)
  garbage = 5.0 * np.random.default_rng(3).normal(size=(B, 4, DIN)).astype(np.float32)
  x_pad = np.concatenate([x, garbage], axis=1)  # 4 more pad steps of garbage
  x_pad[1, 3:] = x_pad[2, 1:] = 7.0  # pads inside the original length too
  enc = recurrent.RNNEncoder(cell, H, num_layers=2, bidirectional=True)
  variables = enc.lazy_init(jax.random.key(0), x, LENGTHS)
  apply = jax.jit(enc.apply)
  out, finals = apply(variables, x, LENGTHS)
  out_pad, finals_pad = apply(variables, x_pad, LENGTHS)
  np.testing.assert_allclose(out_pad[:, :T], out, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(out_pad[:, T:], 0.0)
  jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6),
               finals_pad, finals)
  for b, n in enumerate(LENGTHS):  # the forward final state is the output at the last real step
    h_final = recurrent.carry_output(cell, finals[1])[b, :H]
    np.testing.assert_allclose(h_final, out[b, n - 1, :H], rtol=1e-6)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_stacked_layers_feed_each_other(cell):
  x = _inputs(4)
  enc = recurrent.RNNEncoder(cell, H, num_layers=2)
  variables = enc.lazy_init(jax.random.key(0), x, LENGTHS)
  layer = recurrent.RNNLayer(cell, H)

  @jax.jit
  def run(params):
    out0, final0 = layer.apply({"params": params["layer_0"]}, x, LENGTHS)
    out1, final1 = layer.apply({"params": params["layer_1"]}, out0, LENGTHS)
    return enc.apply({"params": params}, x, LENGTHS), out1, (final0, final1)
  (out, finals), out1, (final0, final1) = run(variables["params"])
  np.testing.assert_allclose(out, out1, rtol=1e-6, atol=1e-6)
  for got, want in zip(finals, (final0, final1)):
    jax.tree.map(lambda a, e: np.testing.assert_allclose(a, e, rtol=1e-6, atol=1e-6), got, want)


def test_stacked_cells_step_runs_the_layers_in_order():
  """A two-layer decoder step == layer 0's cell, then layer 1's input projection and cell."""
  cells = recurrent.StackedCells("gru", H, num_layers=2)
  rng = np.random.default_rng(5)
  x = rng.normal(size=(B, DIN)).astype(np.float32)
  extra = rng.normal(size=(B, 4)).astype(np.float32)
  carries = (jnp.asarray(rng.normal(size=(B, H)), jnp.float32),) * 2
  (new, top), variables = nn.init_with_output(
      lambda m: m(carries, m.project(x), extra), cells)(jax.random.key(0))
  p = _params(variables)
  xp0 = x @ p["input"]["kernel"] + p["input"]["bias"] + extra @ p["extra_input"]["kernel"]
  # Layer 0's input arrives projected: an identity projection in the NumPy step.
  step0 = {"input": {"kernel": np.eye(xp0.shape[-1]), "bias": 0.0}, "cell": p["cell_0"]}
  step1 = {"input": p["input_1"], "cell": p["cell_1"]}
  for b in range(B):
    h0, _ = _np_step("gru", step0, np.asarray(carries[0][b], np.float64), xp0[b])
    h1, _ = _np_step("gru", step1, np.asarray(carries[1][b], np.float64), h0)
    np.testing.assert_allclose(new[0][b], h0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(top[b], h1, rtol=1e-5, atol=1e-5)


def test_unknown_cell_names_the_field():
  with pytest.raises(ValueError, match="RNNLayer.cell='rnn' is unknown; known: gru, lstm"):
    recurrent.RNNLayer("rnn", H).init(jax.random.key(0), _inputs(), LENGTHS)
