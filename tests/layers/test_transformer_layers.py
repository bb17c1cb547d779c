"""Transformer blocks: formulas, pre/post-LN wiring, scan == loop, cached decode == forward."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import masks
from attention_jax.layers.multihead import MultiHeadAttention
from attention_jax.layers.transformer import (AddPositions, BranchedAttention, FeedForward,
                                              TransformerBlock, TransformerStack,
                                              sinusoidal_table)

B, T, S, D = 2, 6, 5, 8
BLOCK = dict(num_heads=2, head_dim=4, d_ff=16, dropout_rate=0.0)


def _x(seed=0, length=T):
  return jnp.float32(np.random.default_rng(seed).normal(size=(B, length, D)))


def _perturbed(variables, seed=1):
  """Random biases and norm scales too, so every parameter is exercised."""
  leaves, tree = jax.tree.flatten(nn.meta.unbox(variables))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(tree, [a + 0.1 * jax.random.normal(k, a.shape)
                                   for a, k in zip(leaves, keys)])


def test_sinusoidal_table_is_the_formula():
  table = sinusoidal_table(50, 6)
  for pos in (0, 1, 17, 49):
    for i in range(3):
      angle = pos / 10000 ** (2 * i / 6)
      assert math.isclose(table[pos, 2 * i], math.sin(angle), abs_tol=1e-6)
      assert math.isclose(table[pos, 2 * i + 1], math.cos(angle), abs_tol=1e-6)


@pytest.mark.parametrize("kind", ["sinusoidal", "learned"])
def test_positions_at_offsets_equal_the_full_sequence(kind):
  x = _x()
  module = AddPositions(kind=kind, max_len=16)
  variables = module.init(jax.random.key(0), x)
  full = module.apply(variables, x)
  step = module.apply(variables, x[:, 3:4], positions=jnp.array([[3], [3]]))
  np.testing.assert_allclose(step, full[:, 3:4], rtol=1e-6)
  if kind == "sinusoidal":
    np.testing.assert_allclose(full - x, np.broadcast_to(sinusoidal_table(16, D)[:T], x.shape),
                               atol=1e-6)
  with pytest.raises(ValueError, match="sequence length 6 exceeds the positions' max_len 4"):
    AddPositions(kind=kind, max_len=4).init(jax.random.key(0), x)


def _np_layer_norm(x, p):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _np_ffn(x, p):
  return np.maximum(x @ p["wi"]["kernel"] + p["wi"]["bias"], 0) @ p["wo"]["kernel"] + p["wo"]["bias"]


def test_feed_forward_matches_numpy():
  x = _x()
  variables = _perturbed(FeedForward(d_ff=16).init(jax.random.key(0), x))
  np.testing.assert_allclose(FeedForward(d_ff=16).apply(variables, x),
                             _np_ffn(np.asarray(x), variables["params"]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pre_ln", [True, False])
def test_block_wiring_matches_its_parts(pre_ln):
  """pre-LN: x + f(LN(x)); post-LN: LN(x + f(x)); with cross-attention in between."""
  x, enc = _x(0), _x(1, S)
  cross_mask = masks.padding_mask(masks.valid_from_lengths(jnp.array([S, 2]), S))
  block = TransformerBlock(**BLOCK, causal=True, pre_ln=pre_ln)
  variables = _perturbed(block.init(jax.random.key(0), x, None, enc, None, cross_mask))
  got, _ = block.apply(variables, x, None, enc, None, cross_mask)
  p = variables["params"]
  mha = MultiHeadAttention(num_heads=2, head_dim=4)
  self_attn = lambda y: mha.apply({"params": p["self_attention"]}, y, is_causal=True)[0]
  cross = lambda y: mha.apply({"params": p["cross_attention"]}, y, enc, cross_mask)[0]
  ffn = lambda y: _np_ffn(np.asarray(y), p["ffn"])
  norm = lambda y, name: _np_layer_norm(np.asarray(y), p[f"{name}_norm"])
  h = x
  for f, name in ((self_attn, "self_attention"), (cross, "cross_attention"), (ffn, "ffn")):
    h = h + f(norm(h, name)) if pre_ln else norm(h + f(h), name)
  np.testing.assert_allclose(got, h, rtol=1e-4, atol=1e-4)


def test_branched_attention_matches_numpy():
  heads = jnp.float32(np.random.default_rng(2).normal(size=(B, T, 3, 4)))
  module = BranchedAttention(d_ff=5)
  variables = _perturbed(module.init(jax.random.key(0), heads, D))
  got = module.apply(variables, heads, D)
  p = jax.tree.map(np.asarray, variables["params"])
  softmax = lambda z: np.exp(z) / np.exp(z).sum()
  kappa, alpha = softmax(p["kappa_logits"]), softmax(p["alpha_logits"])
  want = 0
  for i in range(3):
    branch = kappa[i] * np.asarray(heads)[:, :, i] @ p["w_o"][i]
    hidden = np.maximum(branch @ p["w1"][i] + p["b1"][i], 0)
    want = want + alpha[i] * (hidden @ p["w2"][i] + p["b2"][i])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(kappa.sum(), 1.0, rtol=1e-6)


def _stack_params_like_scan(unscanned, num_layers):
  layers = [unscanned["params"][f"layer_{i}"] for i in range(num_layers)]
  params = {"layers": jax.tree.map(lambda *a: jnp.stack(a), *layers)}
  params.update({k: v for k, v in unscanned["params"].items() if not k.startswith("layer_")})
  return {"params": params}


@pytest.mark.parametrize("weighted", [False, True])
def test_scanned_layers_equal_unscanned_with_the_same_weights(weighted):
  x = _x()
  block = dict(BLOCK, causal=True, weighted=weighted)
  loop = TransformerStack(num_layers=3, block=block)
  scan = TransformerStack(num_layers=3, block=block, scan_layers=True, remat=True)
  # Jitted: eagerly, every op of the stack and its gradient would be compiled on its own.
  variables = _perturbed(jax.jit(loop.init)(jax.random.key(0), x))
  scanned = _stack_params_like_scan(variables, 3)
  assert jax.tree.structure(scanned) == jax.tree.structure(
      nn.meta.unbox(jax.eval_shape(scan.init, jax.random.key(0), x)))
  loss = lambda m, v: jnp.sum(m.apply(v, x)[0] ** 2)
  forward = lambda m, v: jax.jit(m.apply)(v, x)[0]
  np.testing.assert_allclose(forward(scan, scanned), forward(loop, variables), atol=1e-5)
  g_loop = _stack_params_like_scan(jax.jit(jax.grad(lambda v: loss(loop, v)))(variables), 3)
  g_scan = jax.jit(jax.grad(lambda v: loss(scan, v)))(scanned)
  for a, b in zip(jax.tree.leaves(g_scan), jax.tree.leaves(g_loop)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scan_layers", [False, True])
@pytest.mark.parametrize("pre_ln", [True, False])
def test_cached_decoding_through_the_stack_equals_full_forward(scan_layers, pre_ln):
  x, enc = _x(3), _x(4, S)
  stack = TransformerStack(num_layers=2, block=dict(BLOCK, causal=True, pre_ln=pre_ln),
                           scan_layers=scan_layers)
  variables = _perturbed(stack.init(jax.random.key(0), x, None, enc))
  full, _ = stack.apply(variables, x, None, enc)
  cache = stack.init_cache(B, max_len=T + 2)
  step = jax.jit(lambda token, cache: stack.apply(variables, token, cache, enc))
  steps = []
  for t in range(T):
    out, cache = step(x[:, t:t + 1], cache)
    steps.append(out)
  np.testing.assert_allclose(jnp.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5)
  for leaf in jax.tree.leaves(cache):
    assert leaf.shape[0] == B  # batch first in every leaf, for beam search


def test_causal_stack_by_gradients():
  x = _x(5)
  stack = TransformerStack(num_layers=2, block=dict(BLOCK, causal=True))
  variables = stack.init(jax.random.key(0), x)
  jac = jax.jit(jax.jacrev(lambda x: stack.apply(variables, x)[0][0]))(x)[:, :, 0]  # [T, D, T, D]
  dep = np.abs(np.asarray(jac)).sum(axis=(1, 3))
  future = np.triu(np.ones((T, T), bool), k=1)
  np.testing.assert_array_equal(dep[future], 0.0)
  assert (dep[~future] > 0).all()


def test_dropout_is_active_only_when_not_deterministic():
  x = _x(6)
  stack = TransformerStack(num_layers=1, block=dict(BLOCK, dropout_rate=0.5))
  variables = stack.init(jax.random.key(0), x)
  a = stack.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(1)})[0]
  b = stack.apply(variables, x, deterministic=False, rngs={"dropout": jax.random.key(2)})[0]
  assert not np.allclose(a, b)
  np.testing.assert_array_equal(stack.apply(variables, x)[0], stack.apply(variables, x)[0])
