"""RNNSeq2Seq: decode == training for every attention kind, causality, padding, REINFORCE."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from attention_jax.attention import hard
from attention_jax.models.rnn_seq2seq import RNNSeq2Seq

V, B, S, T = 12, 3, 7, 6
LENGTHS = np.array([7, 4, 1], np.int32)
SMALL = dict(vocab_size=V, hidden_dim=16, src_embed_dim=8, tgt_embed_dim=6)

# Every attention kind with both cells; scores, layers and directions vary across them.
CASES = {
    ("none", "gru"): dict(attention="none", num_layers=2),
    ("none", "lstm"): dict(attention="none"),
    ("bahdanau", "gru"): dict(attention="bahdanau", score="additive", bidirectional=True),
    ("bahdanau", "lstm"): dict(attention="bahdanau", score="location", max_len=12),
    ("luong", "gru"): dict(attention="luong", score="general", num_layers=2, bidirectional=True),
    ("luong", "lstm"): dict(attention="luong", score="cosine"),
    ("luong_no_feeding", "gru"): dict(attention="luong", score="dot", input_feeding=False),
    ("luong_no_feeding", "lstm"): dict(attention="luong", score="pearson", input_feeding=False),
    ("local", "gru"): dict(attention="local", score="general", window=2),
    ("local", "lstm"): dict(attention="local", score="scaled_dot", window=1, bidirectional=True),
    ("hard", "gru"): dict(attention="hard", score="general"),
    ("hard", "lstm"): dict(attention="hard", score="scaled_dot", num_layers=2),
    # location_aware carries the previous alignment in the state, with every alignment kind
    # and both queries (bahdanau s_{t-1}, luong-style s_t).
    ("location_aware", "gru"): dict(attention="bahdanau", score="location_aware",
                                    conv_filters=3, conv_width=5),
    ("location_aware_local", "gru"): dict(attention="local", score="location_aware",
                                          conv_width=3),
    ("location_aware_hard", "lstm"): dict(attention="hard", score="location_aware",
                                          bidirectional=True),  # default filters: wider than S
}


def _data(seed=0, src_len=S, tgt_len=T):
  rng = np.random.default_rng(seed)
  inputs = rng.integers(2, V, size=(B, src_len)).astype(np.int32)
  inputs[np.arange(src_len)[None, :] >= LENGTHS[:, None]] = 0  # pad id
  targets_in = rng.integers(1, V, size=(B, tgt_len)).astype(np.int32)
  return inputs, LENGTHS, targets_in


@functools.lru_cache(maxsize=None)
def _model(kind, cell):
  model = RNNSeq2Seq(cell=cell, **SMALL, **CASES[kind, cell])
  # lazy_init computes only the parameters: much cheaper than compiling init's forward pass.
  shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in _data()]
  return model, model.lazy_init(jax.random.key(0), *shapes)


def _teacher_forced_and_decoded(model, variables, inputs, lengths, targets_in, padded):
  """Full forward, the same targets fed one token at a time, and a padded-source forward."""
  logits, inter = model.apply(variables, inputs, lengths, targets_in,
                              mutable=["intermediates", "reinforce"])
  encoded = model.apply(variables, inputs, lengths, method=model.encode)
  state = model.apply(variables, encoded, lengths, method=model.init_decode_state)

  def one_token(state, tokens):
    (step_logits, state), step_inter = model.apply(
        variables, state, tokens, method=model.decode_step, mutable=["intermediates"])
    return state, (step_logits, step_inter)

  last_state, (step_logits, step_inter) = jax.lax.scan(one_token, state, targets_in.T)
  logits_padded = model.apply(variables, padded, lengths, targets_in)
  return (logits, inter, jnp.swapaxes(step_logits, 0, 1), step_inter, state, last_state,
          logits_padded)


@pytest.mark.parametrize("kind,cell", list(CASES))
def test_decode_step_equals_teacher_forcing_and_source_padding_is_invisible(kind, cell):
  model, variables = _model(kind, cell)
  attention = CASES[kind, cell]["attention"]
  inputs, lengths, targets_in = _data(1)
  padded = np.concatenate([inputs, np.full((B, 3), 5, np.int32)], axis=1)  # garbage pads
  (logits, inter, decoded, step_inter, state, last_state, logits_padded) = jax.jit(
      functools.partial(_teacher_forced_and_decoded, model))(
          variables, inputs, lengths, targets_in, padded)

  assert logits.shape == (B, T, V) and logits.dtype == jnp.float32
  np.testing.assert_allclose(decoded, logits, rtol=0, atol=1e-5)
  np.testing.assert_allclose(logits_padded, logits, rtol=0, atol=1e-5)
  for leaf in jax.tree.leaves((state, last_state)):  # beam search gathers along axis 0
    assert leaf.shape[0] == B

  if attention == "none":
    assert not inter
    return
  weights = inter["intermediates"]["attention_weights"][0]  # [batch, tgt_len, src_len]
  assert weights.shape == (B, T, S)
  np.testing.assert_allclose(  # the heatmaps of both paths agree
      jnp.swapaxes(step_inter["intermediates"]["attention_weights"][0], 0, 1), weights,
      atol=1e-5)
  pad = np.arange(S)[None, None, :] >= LENGTHS[:, None, None]
  assert np.all(np.broadcast_to(pad, weights.shape) <= (weights == 0))
  if attention != "local":  # local-p weights are Gaussian-scaled, not normalised
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
  if attention == "hard":
    log_prob = inter["reinforce"]["log_prob"][0]  # [batch, tgt_len]
    np.testing.assert_allclose(log_prob, np.log(weights.max(-1)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind,cell", [("luong", "lstm"), ("bahdanau", "gru")])
def test_decoder_is_causal_by_gradients(kind, cell):
  """d logits[t] / d target_embedding[s] is zero for s > t and non-zero for s <= t."""
  model, variables = _model(kind, cell)
  inputs, lengths, targets_in = _data(2)

  def logits_per_step(delta):  # delta [batch, tgt_len, embed] is added to the target embeddings
    def add_delta(next_fun, args, kwargs, context):
      out = next_fun(*args, **kwargs)
      if context.module.name == "tgt_embed" and context.method_name == "__call__":
        out = out + delta
      return out
    with nn.intercept_methods(add_delta):
      logits = model.apply(variables, inputs, lengths, targets_in)
    return jnp.sum(logits, axis=(0, 2))  # [tgt_len]

  jac = jax.jit(jax.jacrev(logits_per_step))(jnp.zeros((B, T, SMALL["tgt_embed_dim"])))
  influence = np.abs(np.asarray(jac)).sum(axis=(1, 3))  # [t (output), s (input)]
  future = np.triu(np.ones((T, T), bool), k=1)
  assert np.all(influence[future] == 0.0)
  assert np.all(influence[~future] > 0.0)


def _rbg_key(seed):
  # The rbg PRNG halves the compile time of dropout and sampling inside the scans on CPU.
  return jax.random.key(seed, impl="rbg")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("kind", ["none", "bahdanau", "luong", "local", "hard"])
def test_dtype_grid_is_finite_and_close_to_float32(kind, dtype):
  """Training mode (dropout, sampling) in each compute dtype; bfloat16 evaluation ~ float32."""
  reference, variables = _model(kind, "lstm")
  model = reference.clone(dtype=jnp.dtype(dtype), dropout_rate=0.1)
  inputs, lengths, targets_in = _data(3)
  train = jax.jit(lambda key: model.apply(
      variables, inputs, lengths, targets_in, deterministic=False,
      rngs={"dropout": key, "sample": jax.random.fold_in(key, 1)}))
  first, second = train(_rbg_key(1)), train(_rbg_key(2))
  for logits in (first, second):
    assert logits.shape == (B, T, V) and logits.dtype == jnp.float32
    assert np.all(np.isfinite(logits))
  assert np.abs(first - second).max() > 1e-3  # dropout is on and draws fresh masks

  if dtype == "bfloat16":
    evaluation, expected = jax.jit(lambda: (
        model.apply(variables, inputs, lengths, targets_in),
        reference.apply(variables, inputs, lengths, targets_in)))()
    assert evaluation.dtype == jnp.float32 and np.all(np.isfinite(evaluation))
    np.testing.assert_allclose(evaluation, expected, rtol=0, atol=0.15)


def test_location_aware_state_holds_the_previous_steps_weights():
  """Uniform over the real positions at first, then each step's weights, which the next
  step's scores read (a non-zero gradient)."""
  model, variables = _model("location_aware", "gru")
  inputs, lengths, targets_in = _data(4)
  step = lambda state, tokens: model.apply(variables, state, tokens, method=model.decode_step,
                                           mutable=["intermediates"])

  @jax.jit
  def two_steps():
    encoded = model.apply(variables, inputs, lengths, method=model.encode)
    state = model.apply(variables, encoded, lengths, method=model.init_decode_state)
    (_, after_first), inter = step(state, targets_in[:, 0])

    def second_logits(previous):
      (logits, _), _ = step({**after_first, "previous_alignment": previous}, targets_in[:, 1])
      return jnp.sum(logits ** 2)

    grad = jax.grad(second_logits)(after_first["previous_alignment"])
    return state, after_first, inter["intermediates"]["attention_weights"][0], grad

  state, after_first, weights, grad = two_steps()
  real = np.arange(S)[None, :] < LENGTHS[:, None]
  np.testing.assert_allclose(state["previous_alignment"], real / LENGTHS[:, None], rtol=1e-6)
  np.testing.assert_array_equal(after_first["previous_alignment"], weights)  # [batch, src_len]
  assert np.abs(weights - state["previous_alignment"]).max() > 1e-4  # it did move
  # Every example's second step reads it, but one of a single position (its weight is 1
  # whatever the scores).
  assert np.all(np.abs(np.asarray(grad))[LENGTHS > 1].sum(-1) > 0)


def test_parameters_carry_logical_axes():
  _, variables = _model("luong", "lstm")
  spec = nn.get_partition_spec(variables)["params"]
  P = jax.sharding.PartitionSpec
  assert spec["src_embed"]["embedding"] == P("vocab", "embed")
  assert spec["readout"]["kernel"] == P("hidden", "vocab")
  assert spec["decoder"]["cell_0"]["kernel"] == P("hidden", "gates")
  assert spec["encoder"]["layer_0"]["input"]["kernel"] == P("embed", "gates")


@pytest.mark.parametrize("field,value,known", [
    ("attention", "global", "none, bahdanau, luong, local, hard"),
    ("score", "bilinear", "dot, scaled_dot, general"),
    ("cell", "rnn", "gru, lstm"),
])
def test_unknown_names_raise_with_the_field_and_known_values(field, value, known):
  with pytest.raises(ValueError, match=f"RNNSeq2Seq.{field}='{value}' is unknown; known: {known}"):
    RNNSeq2Seq(vocab_size=V, **{field: value})


def test_hard_attention_learns_to_copy_with_reinforce():
  """Copy task: CE trains everything but the scores; the surrogate trains the scores."""
  vocab, batch, length, steps = 12, 32, 6, 300
  model = RNNSeq2Seq(vocab_size=vocab, attention="hard", score="general", cell="gru",
                     hidden_dim=32, src_embed_dim=16, tgt_embed_dim=16)

  def copy_batch(key):
    x = jax.random.randint(key, (batch, length), 2, vocab)  # 0 = pad, 1 = BOS
    targets_in = jnp.concatenate([jnp.ones((batch, 1), jnp.int32), x[:, :-1]], axis=1)
    return x, jnp.full((batch,), length), targets_in, x

  optimizer = optax.adam(1e-2)

  def loss_fn(params, baseline, key, batch_):
    x, lengths, targets_in, targets = batch_
    logits, inter = model.apply({"params": params}, x, lengths, targets_in, deterministic=False,
                                rngs={"sample": key}, mutable=["reinforce"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets).sum(-1)  # [batch]
    log_prob = inter["reinforce"]["log_prob"][0].sum(-1)  # [batch]
    surrogate = hard.reinforce_surrogate(log_prob, -nll, baseline)
    return jnp.mean(nll + surrogate), nll

  @jax.jit
  def train(params):
    def step(carry, i):
      params, opt_state, baseline = carry
      data_key, sample_key = jax.random.split(jax.random.fold_in(_rbg_key(1), i))
      (_, nll), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, baseline, sample_key, copy_batch(data_key))
      updates, opt_state = optimizer.update(grads, opt_state, params)
      params = optax.apply_updates(params, updates)
      return (params, opt_state, hard.moving_average_baseline(baseline, -nll)), None
    carry = (params, optimizer.init(params), jnp.float32(0.0))
    return jax.lax.scan(step, carry, jnp.arange(steps))[0][0]

  x, lengths, targets_in, targets = copy_batch(jax.random.key(0))
  params = nn.unbox(jax.jit(model.init)(_rbg_key(0), x, lengths, targets_in)["params"])
  trained = train(params)
  assert np.abs(trained["align"]["w"] - params["align"]["w"]).max() > 1e-3  # REINFORCE moved them

  x, lengths, targets_in, targets = copy_batch(jax.random.key(123))
  logits = jax.jit(model.apply)({"params": trained}, x, lengths, targets_in)  # argmax attention
  accuracy = float(np.mean(np.asarray(logits).argmax(-1) == np.asarray(targets)))
  assert accuracy > 0.5, f"copy accuracy {accuracy:.2f} (chance 0.10)"
