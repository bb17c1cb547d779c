"""Transformer models: decode == teacher forcing, causality, padding invariance, dtypes."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.models.transformer import DecoderOnlyLM, EncoderDecoderTransformer

B, S, T, V = 2, 7, 6, 11
SMALL = dict(vocab_size=V, d_model=16, num_heads=2, d_ff=32, num_layers=2, max_len=16,
             dropout_rate=0.0)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  inputs = jnp.asarray(rng.integers(3, V, size=(B, S)), jnp.int32)
  lengths = jnp.array([S, 4])
  inputs = jnp.where(jnp.arange(S)[None] < lengths[:, None], inputs, 0)  # pad id 0
  targets_in = jnp.asarray(rng.integers(3, V, size=(B, T)), jnp.int32)
  return inputs, lengths, targets_in


def _step_through(model, variables, state, tokens):
  """Logits `[batch, length, vocab]` from feeding `tokens` one at a time to decode_step."""
  step = jax.jit(lambda s, tok: model.apply(variables, s, tok, method=model.decode_step))
  logits = []
  for t in range(tokens.shape[1]):
    out, state = step(state, tokens[:, t])
    logits.append(out)
  return jnp.stack(logits, axis=1), state


def _init_seq2seq(**overrides):
  model = EncoderDecoderTransformer(**dict(SMALL, **overrides))
  inputs, lengths, targets_in = _batch()
  return model, model.init(jax.random.key(0), inputs, lengths, targets_in)


VARIANTS = {
    "pre-LN": {},
    "post-LN untied learned": dict(pre_ln=False, tie_output=False, positions="learned"),
    "scanned GQA": dict(scan_layers=True, remat=True, num_kv_heads=1),
    "weighted blockwise": dict(weighted=True, implementation="blockwise"),
    "shared embeddings": dict(share_embeddings=True, encoder_layers=1),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_seq2seq_decode_steps_equal_teacher_forcing(variant):
  model, variables = _init_seq2seq(**VARIANTS[variant])
  inputs, lengths, targets_in = _batch(1)
  full = model.apply(variables, inputs, lengths, targets_in)
  encoded = model.apply(variables, inputs, lengths, method=model.encode)
  state = model.apply(variables, encoded, lengths, method=model.init_decode_state)
  logits, state = _step_through(model, variables, state, targets_in)
  np.testing.assert_allclose(logits, full, atol=1e-5, rtol=1e-5)
  for leaf in jax.tree.leaves(state):
    assert leaf.shape[0] == B


@pytest.mark.parametrize("variant", ["pre-LN", "scanned GQA"])
def test_lm_decode_steps_equal_forward(variant):
  model = DecoderOnlyLM(**dict(SMALL, **VARIANTS[variant]))
  _, _, tokens = _batch(2)
  variables = model.init(jax.random.key(0), tokens)
  full = model.apply(variables, tokens)
  state = model.apply(variables, B, method=model.init_decode_state)
  logits, _ = _step_through(model, variables, state, tokens)
  np.testing.assert_allclose(logits, full, atol=1e-5, rtol=1e-5)


def test_decoder_is_causal_and_ignores_padding():
  model, variables = _init_seq2seq()
  inputs, lengths, targets_in = _batch(3)
  f = jax.jit(lambda i, l, t: model.apply(variables, i, l, t))
  base = f(inputs, lengths, targets_in)
  for j in range(1, T):  # a later target token never changes an earlier logit
    changed = f(inputs, lengths, targets_in.at[:, j].set((targets_in[:, j] + 1) % V))
    np.testing.assert_array_equal(changed[:, :j], base[:, :j])
    assert not np.allclose(changed[:, j:], base[:, j:])
  # Pads appended to the source, or garbage behind a shorter length, change nothing.
  padded = jnp.pad(inputs, ((0, 0), (0, 3)))
  np.testing.assert_allclose(f(padded, lengths, targets_in), base, atol=1e-5)
  garbage = inputs.at[1, 5].set(7)  # sequence 1 has length 4
  np.testing.assert_allclose(f(garbage, lengths, targets_in), base, atol=1e-6)
  # Pads appended to the target leave the real positions unchanged.
  longer = f(inputs, lengths, jnp.pad(targets_in, ((0, 0), (0, 2))))
  np.testing.assert_allclose(longer[:, :T], base, atol=1e-5)


def test_attention_weights_are_sown_per_layer_and_head():
  model, variables = _init_seq2seq()
  inputs, lengths, targets_in = _batch(4)
  logits, state = model.apply(variables, inputs, lengths, targets_in, mutable=["intermediates"])
  np.testing.assert_array_equal(logits, model.apply(variables, inputs, lengths, targets_in))
  inter = state["intermediates"]
  cross = inter["decoder"]["layer_1"]["cross_attention"]["attention_weights"][0]
  assert cross.shape == (B, 2, T, S)
  np.testing.assert_array_equal(np.asarray(cross)[1, :, :, 4:], 0.0)  # source padding
  self_w = inter["encoder"]["layer_0"]["self_attention"]["attention_weights"][0]
  np.testing.assert_allclose(self_w.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("model_cls", [EncoderDecoderTransformer, DecoderOnlyLM])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_dtypes_give_finite_float32_logits(model_cls, dtype):
  model = model_cls(**SMALL, dtype=dtype)
  inputs, lengths, targets_in = _batch(5)
  args = (inputs, lengths, targets_in) if model_cls is EncoderDecoderTransformer else (targets_in,)
  variables = model.init(jax.random.key(0), *args)
  logits = model.apply(variables, *args)
  assert logits.dtype == jnp.float32 and logits.shape == (B, T, V)
  assert np.isfinite(logits).all()
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nn.meta.unbox(variables)))


def test_bad_sizes_are_named():
  with pytest.raises(ValueError, match=r"model.num_heads \(3\) must divide model.d_model \(16\)"):
    _init_seq2seq(num_heads=3)
  with pytest.raises(ValueError, match="model.share_embeddings needs one vocabulary"):
    _init_seq2seq(share_embeddings=True, src_vocab_size=20)


def test_token_embeddings_and_tied_logits_start_at_unit_scale():
  """Embedding std d^-0.5, scaled by sqrt(d): unit scale, like the sinusoids beside it; at std 1
  the token part was sqrt(d) times larger and the tied logits had std sqrt(d)."""
  d = 128
  model = DecoderOnlyLM(vocab_size=512, d_model=d, num_heads=4, d_ff=256, num_layers=1,
                        max_len=16, dropout_rate=0.0)
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 512, (4, 16)), jnp.int32)
  # Jitted: eagerly, each op of this larger model would be compiled on its own; the small
  # models of the other tests share their eager ops, which beats compiling each whole.
  variables = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), tokens))
  table = variables["params"]["embed"]["table"]["embedding"]
  assert 0.9 < float(jnp.std(table)) * d ** 0.5 < 1.1
  logits = jax.jit(model.apply)(variables, tokens)  # tied output: final norm, then the table
  assert 0.5 < float(jnp.std(logits)) < 2.0
