"""MultiHeadAttention against a NumPy version of the formula with the same weights."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import masks
from attention_jax.layers.multihead import MultiHeadAttention, share_rows

B, T, S, D = 2, 5, 7, 12


def _np_mha(params, x, y, heads, kv_heads, mask):
  """concat_i softmax(q_i k_i^T / sqrt(d)) v_i, then W_O, in float64 loops over heads."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  proj = lambda z, name: np.einsum("btd,dnh->btnh", z, p[name]["kernel"]) + p[name]["bias"]
  q, k, v = proj(x, "query"), proj(y, "key"), proj(y, "value")
  head_dim = q.shape[-1]
  heads_out = []
  for n in range(heads):
    kv = n // (heads // kv_heads)
    logits = np.einsum("btd,bsd->bts", q[:, :, n], k[:, :, kv]) / np.sqrt(head_dim)
    m = np.broadcast_to(mask[:, 0], logits.shape) if mask is not None else np.ones_like(logits, bool)
    logits = np.where(m, logits, -np.inf)
    w = np.exp(logits - logits.max(-1, keepdims=True))
    heads_out.append(np.einsum("bts,bsd->btd", w / w.sum(-1, keepdims=True), v[:, :, kv]))
  concat = np.stack(heads_out, axis=2)  # [batch, q_len, heads, head_dim]
  return np.einsum("btnh,nhd->btd", concat, p["out"]["kernel"]) + p["out"]["bias"]


def _data(seed=0):
  rng = np.random.default_rng(seed)
  return jnp.float32(rng.normal(size=(B, T, D))), jnp.float32(rng.normal(size=(B, S, D)))


@functools.partial(jax.jit, static_argnums=0, static_argnames="is_causal")
def _init(module, *args, **kwargs):
  # Jitted, as are the layer calls below: eagerly, every op would be compiled on its own.
  variables = module.init(jax.random.key(0), *args, **kwargs)
  # Biases start at zero; random ones make the comparison check them too.
  return jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape),
                      nn.meta.unbox(variables))


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (4, 2), (4, 1)])
@pytest.mark.parametrize("implementation", ["reference", "blockwise", "xla"])
def test_cross_attention_matches_numpy(heads, kv_heads, implementation):
  x, y = _data()
  kv_valid = masks.valid_from_lengths(jnp.array([S, 3]), S)
  mask = masks.padding_mask(kv_valid)
  mha = MultiHeadAttention(num_heads=heads, head_dim=3, num_kv_heads=kv_heads,
                           implementation=implementation)
  variables = _init(mha, x, y, mask)
  out, cache = jax.jit(mha.apply)(variables, x, y, mask)
  assert cache is None and out.shape == (B, T, D)
  np.testing.assert_allclose(out, _np_mha(variables["params"], x, y, heads, kv_heads,
                                          np.asarray(mask)), rtol=1e-5, atol=1e-5)


def test_causal_self_attention_matches_numpy_and_sows_weights():
  x, _ = _data(1)
  mha = MultiHeadAttention(num_heads=3, head_dim=4, implementation="blockwise")
  variables = _init(mha, x, is_causal=True)
  plain, _ = jax.jit(lambda v: mha.apply(v, x, is_causal=True))(variables)
  (out, _), state = jax.jit(lambda v: mha.apply(v, x, is_causal=True,
                                                mutable=["intermediates"]))(variables)
  np.testing.assert_array_equal(out, plain)  # sowing changes no number
  causal = np.asarray(masks.causal_mask(T))
  np.testing.assert_allclose(out, _np_mha(variables["params"], x, x, 3, 3, causal),
                             rtol=1e-5, atol=1e-5)
  (weights,) = state["intermediates"]["attention_weights"]
  assert weights.shape == (B, 3, T, T)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(weights)[..., ~causal[0, 0]], 0.0)


@pytest.mark.parametrize("chunk", [1, 2])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_cached_decoding_equals_full_forward(chunk, kv_heads):
  x, _ = _data(2)
  t = 6
  x = x[:, :1].repeat(t, axis=1) + jnp.arange(t)[None, :, None] * 0.1
  mha = MultiHeadAttention(num_heads=4, head_dim=3, num_kv_heads=kv_heads)
  variables = _init(mha, x, is_causal=True)
  full, _ = jax.jit(lambda v: mha.apply(v, x, is_causal=True))(variables)
  cache = mha.init_cache(B, max_len=8)
  step = jax.jit(lambda x, cache: mha.apply(variables, x, is_causal=True, cache=cache))
  outs = []
  for start in range(0, t, chunk):
    out, cache = step(x[:, start:start + chunk], cache)
    outs.append(out)
  np.testing.assert_array_equal(cache.index, [t, t])
  np.testing.assert_allclose(jnp.concatenate(outs, axis=1), full, atol=1e-5, rtol=1e-5)


def test_cache_with_per_sequence_positions():
  """Two sequences at different positions in one cache each see only their own past."""
  x, _ = _data(3)
  mha = MultiHeadAttention(num_heads=2, head_dim=3)
  variables = _init(mha, x, is_causal=True)
  apply = jax.jit(lambda x, cache=None: mha.apply(variables, x, is_causal=True, cache=cache))
  weights_of = jax.jit(lambda x, cache=None: mha.apply(
      variables, x, is_causal=True, cache=cache, mutable=["intermediates"])[1][
          "intermediates"]["attention_weights"][0])
  full, _ = apply(x)
  cache = mha.init_cache(B, max_len=T)
  cache, outs = cache, {}
  # Sequence 0 gets 3 tokens in one call, sequence 1 two; then one token each.
  cache = cache._replace(index=jnp.array([0, 0]))
  out, cache = apply(x[:, :3], cache)
  np.testing.assert_allclose(out, full[:, :3], atol=1e-5)
  cache = cache._replace(index=jnp.array([3, 2]))  # sequence 1 rewinds one step
  step = jnp.stack([x[0, 3], x[1, 2]])[:, None]
  out, cache = apply(step, cache)
  np.testing.assert_allclose(out[:, 0], jnp.stack([full[0, 3], full[1, 2]]), atol=1e-5)


def test_causality_by_gradients():
  x, _ = _data(4)
  mha = MultiHeadAttention(num_heads=2, head_dim=4)
  variables = _init(mha, x, is_causal=True)
  jacobian = jax.jit(jax.jacrev(lambda x: mha.apply(variables, x, is_causal=True)[0][0]))
  jac = jacobian(x)  # [T, D, B, T, D]
  dep = np.abs(np.asarray(jac[:, :, 0])).sum(axis=(1, 3))  # [output t, input t]
  future = np.triu(np.ones((T, T), bool), k=1)
  np.testing.assert_array_equal(dep[future], 0.0)
  assert (dep[~future] > 0).all()
  assert np.abs(np.asarray(jac[:, :, 1])).max() == 0.0  # nor across the batch


def test_dropout_on_weights_is_unbiased_and_off_when_deterministic():
  x, y = _data(5)
  mha = MultiHeadAttention(num_heads=2, head_dim=3, dropout_rate=0.5, implementation="blockwise")
  variables = _init(mha, x, y)
  clean, _ = jax.jit(mha.apply)(variables, x, y)
  f = lambda r: mha.apply(variables, x, y, deterministic=False, rngs={"dropout": r})[0]
  samples = jax.jit(jax.vmap(f))(jax.random.split(jax.random.key(3), 4000))
  assert not np.allclose(samples[0], clean)
  stderr = samples.std(0) / np.sqrt(len(samples))
  np.testing.assert_array_less(np.abs(samples.mean(0) - clean), 5 * stderr + 1e-6)


def test_parameters_carry_logical_axes():
  x, _ = _data()
  variables = jax.eval_shape(MultiHeadAttention(num_heads=2, head_dim=3).init,
                             jax.random.key(0), x)
  specs = nn.get_partition_spec(variables)["params"]
  assert tuple(specs["query"]["kernel"]) == ("embed", "heads", "kv")
  assert tuple(specs["out"]["kernel"]) == ("heads", "kv", "embed")


def test_heads_must_divide():
  x, _ = _data()
  with pytest.raises(ValueError, match=r"num_heads \(3\) must be a multiple of num_kv_heads \(2\)"):
    MultiHeadAttention(num_heads=3, head_dim=2, num_kv_heads=2).init(jax.random.key(0), x)


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_shared_row_cache_attends_to_each_hypothesis_own_history(kv_heads):
  """Beam search's cache (`owner`): hypothesis i of a group reads position s from row
  owner[i, s]. Its step output and attention weights equal the full causal forward's over
  the history it owns (weights 0 on the positions not yet written)."""
  groups, k, t, d = 2, 3, 4, D
  rng = np.random.default_rng(4)
  rows_x = jnp.float32(rng.normal(size=(groups * k, t, d)))  # what each row holds
  step_x = jnp.float32(rng.normal(size=(groups * k, 1, d)))
  owner_rows = rng.integers(0, k, size=(groups * k, t))
  mha = MultiHeadAttention(num_heads=4, head_dim=3, num_kv_heads=kv_heads)
  variables = _init(mha, rows_x, is_causal=True)
  apply = jax.jit(lambda x, cache=None: mha.apply(variables, x, is_causal=True, cache=cache))
  weights_of = jax.jit(lambda x, cache=None: mha.apply(
      variables, x, is_causal=True, cache=cache, mutable=["intermediates"])[1][
          "intermediates"]["attention_weights"][0])
  _, cache = apply(rows_x, mha.init_cache(groups * k, t + 2))
  owner = np.zeros((groups * k, t + 2, k), np.float32)
  owner[np.arange(groups * k)[:, None], np.arange(t), owner_rows] = 1.0
  shared = share_rows(cache, k)._replace(owner=jnp.asarray(owner))
  weights = weights_of(step_x, shared)  # [n, heads, 1, t + 2]
  out, cache = apply(step_x, shared)
  np.testing.assert_array_equal(cache.owner[:, t], np.eye(k)[np.arange(groups * k) % k])
  # Each hypothesis wrote its step into its own row, at its index, and nowhere else.
  written = share_rows(apply(jnp.concatenate([rows_x, step_x], 1),
                             mha.init_cache(groups * k, t + 2))[1], k)
  np.testing.assert_allclose(cache.key, written.key, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(cache.value, written.value, rtol=1e-6, atol=1e-6)
  for n in range(groups * k):
    group = n // k * k
    history = np.stack([rows_x[group + owner_rows[n, s], s] for s in range(t)])
    sequence = jnp.concatenate([jnp.asarray(history), step_x[n]], axis=0)[None]
    full, _ = apply(sequence)
    np.testing.assert_allclose(out[n, 0], full[0, -1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(weights[n, :, 0, :t + 1], weights_of(sequence)[0, :, -1],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(weights[n, :, 0, t + 1:], 0.0)
