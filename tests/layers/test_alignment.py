"""RNN-decoder attention: every score, local-p and hard attention against NumPy."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import scores
from attention_jax.layers.alignment import Alignment

B, S, D, DV = 3, 9, 6, 5
LENGTHS = np.array([9, 5, 1])
MASK = np.arange(S)[None, :] < LENGTHS[:, None]  # [batch, kv_len]


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(B, D)).astype(np.float32)
  k = rng.normal(size=(B, S, D)).astype(np.float32)
  v = rng.normal(size=(B, S, DV)).astype(np.float32)
  return q, k, v


def _np_softmax(x, mask):
  x = np.where(mask, x, -np.inf)
  e = np.exp(x - x.max(-1, keepdims=True))
  e = np.where(mask, e, 0.0)
  return e / e.sum(-1, keepdims=True)


def _previous(seed=5):
  """An alignment of a previous step: non-negative, summing to one over the real positions."""
  logits = np.random.default_rng(seed).normal(size=(B, S)) * 2
  return _np_softmax(logits, MASK).astype(np.float32)


PREVIOUS = _previous()


def _np_location_features(previous, filters):
  """previous [B, S] convolved with filters [width, channels] -> [B, S, channels], zero padded."""
  half, out = filters.shape[0] // 2, np.zeros(previous.shape + filters.shape[1:])
  for j in range(previous.shape[1]):
    for w in range(filters.shape[0]):
      if 0 <= j + w - half < previous.shape[1]:
        out[:, j] += previous[:, j + w - half, None] * filters[w]
  return out


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


# NumPy versions of each score for one query per example: q [B, d_q], k [B, S, d_k] -> [B, S].
NP_SCORES = {
    "dot": lambda q, k, p: np.einsum("bd,bsd->bs", q, k),
    "scaled_dot": lambda q, k, p: np.einsum("bd,bsd->bs", q, k) / np.sqrt(q.shape[-1]),
    "general": lambda q, k, p: np.einsum("bd,de,bse->bs", q, p["w"], k),
    "additive": lambda q, k, p: np.tanh(
        (q @ p["w_q"])[:, None] + k @ p["w_k"]) @ p["v"],
    "cosine": lambda q, k, p: np.einsum("bd,bsd->bs", _unit(q), _unit(k)) / 0.5,
    "pearson": lambda q, k, p: np.einsum(
        "bd,bsd->bs", _unit(q - q.mean(-1, keepdims=True)),
        _unit(k - k.mean(-1, keepdims=True))) / 0.5,
    "location": lambda q, k, p: (q @ p["w"])[:, :k.shape[1]],
    "location_aware": lambda q, k, p: np.tanh(
        (q @ p["w_q"])[:, None] + k @ p["w_k"]
        + _np_location_features(PREVIOUS, p["filters"]) @ p["w_f"]) @ p["v"],
}


def _init_apply(module, *args, rngs=None, **kwargs):
  # Jitted, as are the other layer calls here: eagerly, every op would be compiled on its own.
  variables = jax.jit(lambda key, *a: module.init(key, *a, **kwargs))(jax.random.key(0), *args)
  out = jax.jit(lambda v, *a: module.apply(v, *a, rngs=rngs, **kwargs))(variables, *args)
  params = jax.tree.map(np.asarray, nn.unbox(variables).get("params", {}))
  return out, params, variables


@pytest.mark.parametrize("name", list(scores.SCORES))
def test_soft_attention_matches_pure_function_and_numpy(name):
  q, k, v = _inputs()
  module = Alignment(score=name, attention_dim=7, max_len=12, temperature=0.5,
                     conv_filters=4, conv_width=5)
  previous = {"previous": PREVIOUS} if name == "location_aware" else {}
  out, params, _ = _init_apply(module, q, k, v, MASK, **previous)

  additive = {"w_q": (D, 7), "w_k": (D, 7), "v": (7,)}
  expected_shapes = {"general": {"w": (D, D)}, "location": {"w": (D, 12)}, "additive": additive,
                     "location_aware": {**additive, "filters": (5, 4), "w_f": (4, 7)}}
  assert jax.tree.map(np.shape, params) == expected_shapes.get(name, {})
  extra = {"temperature": 0.5} if name in ("cosine", "pearson") else {}
  if previous:
    extra = {"previous": PREVIOUS[:, None]}
  pure = scores.get(name)(jnp.asarray(q)[:, None], jnp.asarray(k), **params, **extra)[:, 0]
  np.testing.assert_allclose(pure, NP_SCORES[name](q, k, params), rtol=2e-5, atol=2e-5)
  weights = _np_softmax(np.asarray(pure), MASK)
  np.testing.assert_allclose(out.weights, weights, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.context, np.einsum("bs,bsd->bd", weights, v), rtol=1e-5,
                             atol=1e-6)
  assert out.log_prob is None and out.weights.dtype == jnp.float32


def test_query_axis_equals_one_query_at_a_time():
  q, k, v = _inputs(1)
  module = Alignment(score="additive")
  variables = jax.jit(module.init)(jax.random.key(0), q, k, v, MASK)
  q2 = np.stack([q, -q], axis=1)  # [batch, 2, d]
  apply = jax.jit(module.apply)
  both = apply(variables, q2, k, v, MASK)
  for i in range(2):
    one = apply(variables, q2[:, i], k, v, MASK)
    np.testing.assert_allclose(both.context[:, i], one.context, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(both.weights[:, i], one.weights, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("score", ["additive", "location_aware", "general"])
def test_keys_projected_once_give_the_same_attention(score):
  """`project_keys` hoisted out of a decoder loop changes nothing, values or gradients."""
  q, k, v = _inputs(4)
  module = Alignment(score=score, attention_dim=7, conv_width=3)
  kw = {"previous": PREVIOUS} if score == "location_aware" else {}
  variables = nn.meta.unbox(jax.jit(lambda key: module.init(key, q, k, v, MASK, **kw))(
      jax.random.key(0)))
  projected = jax.jit(lambda v: module.apply(v, k, method=module.project_keys))(variables)
  if score == "general":
    assert projected is None  # only additive and location_aware have a key-only half
    return
  assert projected.shape == (B, S, 7)

  def context(params, hoisted):
    keys = module.apply(params, k, method=module.project_keys) if hoisted else None
    return jnp.sum(module.apply(params, q, k, v, MASK, projected_keys=keys, **kw).context ** 2)

  np.testing.assert_allclose(*(jax.jit(context, static_argnums=1)(variables, hoisted)
                               for hoisted in (True, False)), rtol=1e-6)
  grads = [jax.jit(jax.grad(context), static_argnums=1)(variables, hoisted)["params"]
           for hoisted in (True, False)]
  for name in grads[0]:
    np.testing.assert_allclose(grads[0][name], grads[1][name], rtol=1e-5, atol=1e-7,
                               err_msg=name)


def test_parameters_carry_logical_axes():
  q, k, v = _inputs()
  variables = jax.eval_shape(Alignment(score="additive", kind="local").init, jax.random.key(0),
                             q, k, v, MASK)
  spec = nn.get_partition_spec(variables)["params"]
  assert spec["w_q"] == jax.sharding.PartitionSpec("hidden", "attention")
  assert spec["w_k"] == jax.sharding.PartitionSpec("memory", "attention")
  assert spec["v_p"] == jax.sharding.PartitionSpec("attention")


@pytest.mark.parametrize("window", [1, 2])
def test_local_p_matches_numpy_formula(window):
  q, k, v = _inputs(2)
  module = Alignment(score="general", kind="local", window=window, attention_dim=4)
  out, p, variables = _init_apply(module, q, k, v, MASK)

  pos_t = LENGTHS * (1.0 / (1.0 + np.exp(-(np.tanh(q @ p["w_p"]) @ p["v_p"]))))  # [batch]
  s = np.arange(S)[None, :]
  in_window = MASK & (np.abs(s - pos_t[:, None]) <= window)
  align = _np_softmax(np.einsum("bd,de,bse->bs", q, p["w"], k), in_window)
  gauss = np.exp(-(s - pos_t[:, None]) ** 2 / (2 * (window / 2) ** 2))
  weights = align * gauss
  np.testing.assert_allclose(out.weights, weights, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.context, np.einsum("bs,bsd->bd", weights, v), rtol=1e-5,
                             atol=1e-6)
  assert np.all(np.asarray(out.weights)[~in_window] == 0.0)  # nothing outside window or length
  assert np.all(np.asarray(out.weights).sum(-1) > 0)

  # The predicted position learns through the Gaussian.
  def loss(params):
    return jnp.sum(module.apply({"params": params}, q, k, v, MASK).context ** 2)
  grads = jax.jit(jax.grad(loss))(nn.unbox(variables)["params"])
  assert np.all(np.isfinite(grads["v_p"])) and np.abs(grads["v_p"]).max() > 0


def test_hard_attention_argmax_when_deterministic():
  q, k, v = _inputs(3)
  module = Alignment(score="general", kind="hard")
  out, p, _ = _init_apply(module, q, k, v, MASK)
  logits = np.where(MASK, np.einsum("bd,de,bse->bs", q, p["w"], k), -np.inf)
  index = logits.argmax(-1)
  np.testing.assert_array_equal(out.index, index)
  np.testing.assert_allclose(out.context, v[np.arange(B), index], rtol=1e-6)
  weights = _np_softmax(logits, MASK)
  np.testing.assert_allclose(out.log_prob, np.log(weights[np.arange(B), index]), rtol=1e-5,
                             atol=1e-6)
  np.testing.assert_allclose(out.weights, weights, rtol=1e-5, atol=1e-7)


def test_hard_attention_samples_with_the_sample_rng():
  q, k, v = _inputs(4)
  q = q * 0.1  # flat weights: samples spread over the real positions
  module = Alignment(score="general", kind="hard")
  variables = jax.jit(module.init)(jax.random.key(0), q, k, v, MASK)
  with pytest.raises(Exception, match="sample"):  # training mode needs an rng
    module.apply(variables, q, k, v, MASK, deterministic=False)

  sample = jax.jit(jax.vmap(lambda key: module.apply(
      variables, q, k, v, MASK, deterministic=False, rngs={"sample": key})))
  out = sample(jax.random.split(jax.random.key(1), 200))
  index = np.asarray(out.index)  # [samples, batch]
  assert np.all(index < LENGTHS[None, :])  # never a pad
  assert len(np.unique(index[:, 0])) > 1  # sampled, not the argmax
  np.testing.assert_allclose(out.context, v[np.arange(B)[None, :], index], rtol=1e-6)
  picked = np.take_along_axis(np.asarray(out.weights), index[..., None], -1)[..., 0]
  np.testing.assert_allclose(out.log_prob, np.log(picked), rtol=1e-5, atol=1e-6)

  # The context carries no gradient to the scores; log_prob does (REINFORCE).
  params = nn.unbox(variables)["params"]
  grad = lambda f: jax.jit(jax.grad(lambda p: jnp.sum(f(module.apply(
      {"params": p}, q, k, v, MASK, deterministic=False,
      rngs={"sample": jax.random.key(2)})))))(params)["w"]
  assert np.all(grad(lambda o: o.context) == 0.0)
  assert np.abs(grad(lambda o: o.log_prob)).max() > 0


def test_errors_name_the_field():
  q, k, v = _inputs()
  with pytest.raises(ValueError, match="kind='global'.*soft, local, hard"):
    Alignment(kind="global").init(jax.random.key(0), q, k, v, MASK)
  with pytest.raises(ValueError, match="unknown score function 'bilinear'"):
    Alignment(score="bilinear").init(jax.random.key(0), q, k, v, MASK)
  with pytest.raises(ValueError, match="query size 6 must equal key size 4"):
    Alignment(score="dot").init(jax.random.key(0), q, k[..., :4], v, MASK)


@pytest.mark.parametrize("kind", ["soft", "hard", "local"])
def test_location_aware_scores_feed_every_kind(kind):
  """soft, hard and local-p start from the location-aware scores of `previous`."""
  q, k, v = _inputs(6)
  module = Alignment(score="location_aware", kind=kind, attention_dim=7, window=2,
                     conv_filters=3, conv_width=5)
  out, p, variables = _init_apply(module, q, k, v, MASK, previous=PREVIOUS)
  logits = NP_SCORES["location_aware"](q, k, p)
  if kind == "local":
    pos_t = LENGTHS / (1.0 + np.exp(-(np.tanh(q @ p["w_p"]) @ p["v_p"])))  # [batch]
    s = np.arange(S)[None, :]
    in_window = MASK & (np.abs(s - pos_t[:, None]) <= 2)
    weights = _np_softmax(logits, in_window) * np.exp(-(s - pos_t[:, None]) ** 2 / 2.0)
  else:
    weights = _np_softmax(logits, MASK)
  np.testing.assert_allclose(out.weights, weights, rtol=1e-5, atol=1e-6)
  if kind == "hard":
    np.testing.assert_array_equal(out.index, np.where(MASK, logits, -np.inf).argmax(-1))
  else:
    np.testing.assert_allclose(out.context, np.einsum("bs,bsd->bd", weights, v), rtol=1e-5,
                               atol=1e-6)

  # The scores read the previous alignment: moving it moves the weights.
  moved = module.apply(variables, q, k, v, MASK, previous=np.roll(PREVIOUS, 1, axis=-1))
  assert np.abs(np.asarray(moved.weights) - np.asarray(out.weights)).max() > 1e-4


def test_location_aware_parameters_and_missing_previous():
  q, k, v = _inputs()
  module = Alignment(score="location_aware")
  variables = jax.jit(lambda key: module.init(key, q, k, v, MASK, previous=PREVIOUS))(
      jax.random.key(0))
  spec = nn.get_partition_spec(variables)["params"]
  assert spec["filters"] == jax.sharding.PartitionSpec("conv_width", "conv_filters")
  assert spec["w_f"] == jax.sharding.PartitionSpec("conv_filters", "attention")
  assert variables["params"]["filters"].value.shape == (15, 10)  # the defaults
  with pytest.raises(ValueError, match="needs the previous step's alignment"):
    module.apply(variables, q, k, v, MASK)
