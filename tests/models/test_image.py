"""Image models: decode == teacher forcing, padding of strips invisible and nothing real
masked (by gradients), the visual sentinel against NumPy, Xu et al.'s gate and hard recipe."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.models.image import ImageRNN, ImageTransformer, grid_positions

V, B, W, H, T = 11, 3, 21, 10, 5
WIDTHS = np.array([21, 13, 4], np.int32)
SMALL = dict(vocab_size=V, image_height=H, channels=(3, 4), hidden_dim=12, tgt_embed_dim=6,
             attention_dim=7)
CASES = {
    "none": dict(attention="none"),
    "soft_gate": dict(attention="bahdanau", score="additive", context_gate=True),
    "soft_location_aware": dict(attention="bahdanau", score="location_aware", conv_width=3),
    "hard": dict(attention="hard", score="general", expected_context_prob=0.5),
    "luong": dict(attention="luong", score="general", cell="gru"),
    "adaptive": dict(attention="luong", score="additive", sentinel=True),
    "adaptive_general": dict(attention="luong", score="general", sentinel=True,
                             input_feeding=False),
    "transformer": None,
}


def _data(seed=0, width=W):
  rng = np.random.default_rng(seed)
  images = rng.random((B, width, H)).astype(np.float32)
  images[np.arange(width)[None, :] >= WIDTHS[:, None]] = 0.0  # the pipeline's padding
  targets_in = rng.integers(1, V, size=(B, T)).astype(np.int32)
  return images, WIDTHS, targets_in


@functools.lru_cache(maxsize=None)
def _model(kind):
  if kind == "transformer":
    model = ImageTransformer(vocab_size=V, image_height=H, channels=(3, 4), d_model=8,
                             num_heads=2, d_ff=16, num_layers=2, max_len=16, grid_blocks=1)
  else:
    model = ImageRNN(**SMALL, **CASES[kind])
  # lazy_init computes only the parameters: much cheaper than compiling init's forward pass.
  shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in _data()]
  return model, nn.unbox(model.lazy_init(jax.random.key(0), *shapes))


@functools.partial(jax.jit, static_argnums=0)
def _step_through(model, variables, images, widths, targets_in):
  """The targets fed one token at a time through the decoding interface: logits [B, T, V]."""
  encoded = model.apply(variables, images, widths, method=model.encode)
  state = model.apply(variables, encoded, widths, method=model.init_decode_state)
  step = lambda s, tokens: model.apply(variables, s, tokens, method=model.decode_step)[::-1]
  return jnp.swapaxes(jax.lax.scan(step, state, targets_in.T)[1], 0, 1)


@functools.partial(jax.jit, static_argnums=0)
def _forward(model, variables, images, widths, targets_in):
  return model.apply(variables, images, widths, targets_in)


@pytest.mark.parametrize("kind", list(CASES))
def test_decode_steps_equal_teacher_forcing(kind):
  model, variables = _model(kind)
  images, widths, targets_in = _data()
  forced = _forward(model, variables, images, widths, targets_in)
  np.testing.assert_allclose(_step_through(model, variables, images, widths, targets_in),
                             forced, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("kind", ["soft_gate", "adaptive", "transformer"])
def test_strip_padding_is_invisible_and_every_real_column_is_seen(kind):
  """Wider padding changes no logit; by gradients, the logits of a row depend on its last
  real column and on nothing beyond it (nor on any other row)."""
  model, variables = _model(kind)
  images, widths, targets_in = _data()
  wider = np.concatenate([images, np.zeros((B, 19, H), np.float32)], 1)
  np.testing.assert_allclose(_forward(model, variables, wider, widths, targets_in),
                             _forward(model, variables, images, widths, targets_in), atol=1e-5)
  row = 1  # 13 real columns of 21
  loss = lambda x: jnp.sum(model.apply(variables, x, widths, targets_in)[row])
  grads = np.abs(np.asarray(jax.jit(jax.grad(loss))(jnp.asarray(images))))
  assert grads[row, widths[row]:].max() == 0.0  # padding columns
  assert np.delete(grads, row, axis=0).max() == 0.0  # other rows
  assert grads[row, widths[row] - 1].max() > 0.0  # the last real column


def test_attention_gives_padding_no_weight_and_real_positions_all_of_it():
  model, variables = _model("soft_gate")
  images, widths, targets_in = _data()
  # Jitted (as elsewhere in this file): eagerly, every op would be compiled on its own.
  _, inter = jax.jit(lambda v: model.apply(v, images, widths, targets_in,
                                           mutable=["intermediates"]))(variables)
  weights = np.asarray(inter["intermediates"]["attention_weights"][0])  # [B, T, W'*H']
  real = np.asarray(model.grid_lengths(widths))
  assert weights.shape[-1] == np.prod(model.grid_shape(W))
  np.testing.assert_array_equal(real, [6 * 3, 4 * 3, 1 * 3])  # ceil(w / 4) columns x 3 rows
  for b in range(B):
    np.testing.assert_allclose(weights[b, :, :real[b]].sum(-1), 1.0, rtol=1e-5)
    assert (weights[b, :, real[b]:] == 0).all() and (weights[b, :, :real[b]] > 0).all()


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def test_sentinel_step_matches_numpy():
  """One adaptive-attention step (Lu et al. 2017) recomputed in NumPy from the model's
  parameters, the cell's new state and the grid: logits and beta."""
  model, variables = _model("adaptive")
  images, widths, targets_in = _data()
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  tokens = targets_in[:, 0]

  @jax.jit
  def first_step(variables):
    encoded = model.apply(variables, images, widths, method=model.encode)
    state = model.apply(variables, encoded, widths, method=model.init_decode_state)
    step = model.apply(variables, state, tokens, method=model.decode_step,
                       mutable=["intermediates"])
    x_proj = model.apply(variables, tokens, True, method=lambda m, t, d: m._embed_targets(t, d))
    return state, step, x_proj

  state, ((logits, new_state), inter), x_proj = first_step(variables)
  x_proj = np.asarray(x_proj)
  h_prev = np.asarray(state["carry"][-1][1])
  memory_cell, h = (np.asarray(a) for a in new_state["carry"][-1])
  dense = lambda name, x: x @ p[name]["kernel"] + p[name].get("bias", 0.0)
  gate = _sigmoid(dense("sentinel_gate", np.concatenate([x_proj, h_prev], -1)))
  sentinel = dense("sentinel_proj", gate * np.tanh(memory_cell))  # [B, hidden]
  grid = np.asarray(state["memory"])  # [B, S, hidden]
  candidates = np.concatenate([grid, sentinel[:, None]], 1)
  align = p["align"]
  scores = np.tanh((h @ align["w_q"])[:, None] + candidates @ align["w_k"]) @ align["v"]
  real = np.concatenate([np.asarray(state["mask"]), np.ones((B, 1), bool)], 1)
  scores = np.where(real, scores, -np.inf)
  weights = np.exp(scores - scores.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  context = np.einsum("bs,bsd->bd", weights, candidates)
  features = np.tanh(np.concatenate([context, h], -1) @ p["combine"]["kernel"])
  np.testing.assert_allclose(inter["intermediates"]["sentinel_beta"][0], weights[:, -1],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(logits, dense("readout", features), rtol=1e-4, atol=1e-5)
  assert 0 < weights[:, -1].min() and weights[:, -1].max() < 1


def _logits_over_doubled_grid(model, variables, images, widths, targets_in):
  """Teacher-forced logits when the decoder attends over twice the grid (its initial
  state, from the grid's mean, unchanged)."""
  encoded = model.apply(variables, images, widths, method=model.encode)
  state = model.apply(variables, encoded, widths, method=model.init_decode_state)
  state = dict(state, memory=2 * state["memory"], keys=2 * state["keys"])
  return model.apply(variables, state, targets_in, False,
                     method=lambda m, s, y, d: m.teacher_forced(s, y, d))


def test_context_gate_multiplies_the_context():
  """Gate shut (beta_t = sigmoid(-1e4) = 0): the logits do not depend on what the decoder
  attends to; open (the initial parameters), they do."""
  model, variables = _model("soft_gate")
  images, widths, targets_in = _data()
  gate = variables["params"]["context_gate"]
  shut = {"params": dict(variables["params"], context_gate={
      "kernel": jnp.zeros_like(gate["kernel"]), "bias": jnp.full_like(gate["bias"], -1e4)})}
  for params, same in ((shut, True), (variables, False)):
    forced = model.apply(params, images, widths, targets_in)
    doubled = _logits_over_doubled_grid(model, params, images, widths, targets_in)
    assert np.allclose(forced, doubled, atol=1e-5) == same


def test_hard_attention_samples_or_takes_the_expectation_for_the_whole_minibatch():
  """Training draws one flag per minibatch: with probability 1 every step's context is the
  expectation (then no log-prob is rewarded), with 0 a sampled position (log-probs < 0)."""
  images, widths, targets_in = _data()
  for prob, expect_zero in ((1.0, True), (0.0, False)):
    model = ImageRNN(**SMALL, attention="hard", score="general", expected_context_prob=prob)
    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in (images, widths, targets_in)]
    variables = nn.unbox(model.lazy_init(jax.random.key(0), *shapes))
    rngs = {"sample": jax.random.key(3), "dropout": jax.random.key(4)}
    train = jax.jit(lambda v: model.apply(v, images, widths, targets_in, deterministic=False,
                                          rngs=rngs, mutable=["reinforce"]))
    _, sown = train(variables)
    log_prob = np.asarray(sown["reinforce"]["log_prob"][0])
    assert (log_prob == 0).all() if expect_zero else (log_prob < 0).all()
    if expect_zero:  # the expected context: soft attention's logits, so a gradient to the scores
      loss = lambda params: jnp.sum(train({"params": params})[0])
      grad = jax.jit(jax.grad(loss))(variables["params"])["align"]["w"]
      assert np.abs(np.asarray(grad)).max() > 0


def test_grid_positions_are_column_then_row_sinusoids():
  table = np.asarray(grid_positions(5, 3, 8))
  assert table.shape == (5, 3, 8)
  np.testing.assert_array_equal(table[2, 0, :4], table[2, 2, :4])  # columns: same down a column
  np.testing.assert_array_equal(table[0, 1, 4:], table[4, 1, 4:])  # rows: same along a row
  np.testing.assert_allclose(table[3, 1, :2], [np.sin(3.0), np.cos(3.0)], rtol=1e-6)
  np.testing.assert_allclose(table[3, 1, 4:6], [np.sin(1.0), np.cos(1.0)], rtol=1e-6)


@pytest.mark.parametrize("fields,message", [
    (dict(attention="bahdanau", sentinel=True), "model.sentinel needs model.attention='luong'"),
    (dict(attention="luong", context_gate=True), "model.context_gate gates"),
    (dict(attention="luong", score="location", sentinel=True), "has no position"),
])
def test_bad_combinations_are_named(fields, message):
  with pytest.raises(ValueError, match=message):
    ImageRNN(vocab_size=V, **fields)


def test_wrong_image_shape_or_dtype_is_named():
  model, variables = _model("soft_gate")
  images, widths, targets_in = _data()
  with pytest.raises(ValueError, match=r"float \[batch, width, 10\].*got shape \(3, 21, 9\)"):
    model.apply(variables, images[..., :9], widths, targets_in)
  with pytest.raises(ValueError, match="must be float .*uint8"):
    model.apply(variables, images.astype(np.uint8), widths, targets_in)
