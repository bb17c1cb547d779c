"""Hard attention: sampling frequencies, argmax, masking, and REINFORCE unbiasedness."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import hard

SCORES = np.array([0.3, -1.0, 1.2, 0.0])
PROBS = np.exp(SCORES) / np.exp(SCORES).sum()


def _sample_indices(num, mask=None, seed=0):
  keys = jax.random.split(jax.random.key(seed), num)
  values = jnp.eye(4)
  # Jitted, as elsewhere here: eagerly, every op would be compiled on its own.
  sample = jax.jit(jax.vmap(lambda r: hard.hard_attend(r, jnp.float32(SCORES[None]), values,
                                                       mask)))
  return np.asarray(sample(keys).index[:, 0])


def test_samples_follow_the_weights():
  num = 20000
  counts = np.bincount(_sample_indices(num), minlength=4)
  stderr = np.sqrt(num * PROBS * (1 - PROBS))
  np.testing.assert_array_less(np.abs(counts - num * PROBS), 4 * stderr)


def test_masked_positions_are_never_sampled():
  mask = jnp.array([[True, False, False, True]])
  counts = np.bincount(_sample_indices(4000, mask), minlength=4)
  assert counts[1] == counts[2] == 0 and counts[0] > 0 and counts[3] > 0


def test_argmax_without_rng_returns_value_and_log_prob():
  rng = np.random.default_rng(0)
  values = rng.normal(size=(2, 4, 3))
  scores = rng.normal(size=(2, 5, 4))
  out = jax.jit(lambda s, v: hard.hard_attend(None, s, v))(jnp.float32(scores),
                                                          jnp.float32(values))
  idx = scores.argmax(-1)
  np.testing.assert_array_equal(out.index, idx)
  np.testing.assert_allclose(out.context, np.take_along_axis(values, idx[..., None], axis=1),
                             rtol=1e-6)
  log_p = scores - np.log(np.exp(scores).sum(-1, keepdims=True))
  np.testing.assert_allclose(out.log_prob, np.take_along_axis(log_p, idx[..., None], -1)[..., 0],
                             rtol=1e-5)
  np.testing.assert_allclose(out.weights, np.exp(log_p), rtol=1e-5)


def test_fully_masked_rows_give_zero_context_and_finite_gradients():
  scores = jnp.float32([[0.5, 1.0, -0.5], [0.1, 0.2, 0.3]])
  values = jnp.float32(np.arange(6).reshape(3, 2) + 1.0)
  mask = jnp.array([[True, True, True], [False, False, False]])

  def f(scores, values):
    out = hard.hard_attend(jax.random.key(1), scores, values, mask)
    return jnp.sum(out.context) + jnp.sum(out.log_prob), out

  (_, out), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(scores, values)
  np.testing.assert_array_equal(out.context[1], 0.0)
  assert out.log_prob[1] == 0.0
  for g in grads:
    assert np.isfinite(g).all()
  np.testing.assert_array_equal(grads[0][1], 0.0)


def test_context_gradient_reaches_only_the_selected_value():
  values = jnp.float32(np.random.default_rng(2).normal(size=(4, 3)))
  out, grad = jax.jit(jax.value_and_grad(
      lambda v: jnp.sum(hard.hard_attend(None, jnp.float32(SCORES[None]), v).context)))(values)
  want = np.zeros((4, 3))
  want[SCORES.argmax()] = 1.0
  np.testing.assert_array_equal(grad, want)


REWARD = np.array([1.0, 4.0, -2.0, 0.5]) + 10.0  # a large offset: baselines matter


def _per_sample_gradients(baseline, num=20000):
  def surrogate_grad(rng):
    def loss(theta):
      out = hard.hard_attend(rng, theta[None], jnp.eye(4))
      reward = jnp.asarray(REWARD)[out.index[0]]
      return hard.reinforce_surrogate(out.log_prob[0], reward, baseline)
    return -jax.grad(loss)(jnp.float32(SCORES))  # the estimate of d E[R] / d theta
  return np.asarray(jax.jit(jax.vmap(surrogate_grad))(jax.random.split(jax.random.key(7), num)))


@pytest.mark.parametrize("baseline", [0.0, float(PROBS @ REWARD)])
def test_reinforce_gradient_is_unbiased(baseline):
  """E[(R - b) d log p] = d/d theta sum_i p_i R_i = p * (R - p.R), for any constant b."""
  exact = PROBS * (REWARD - PROBS @ REWARD)
  samples = _per_sample_gradients(baseline)
  mean = samples.mean(0)
  stderr = samples.std(0) / np.sqrt(len(samples))
  np.testing.assert_array_less(np.abs(mean - exact), 4 * stderr + 1e-6)


def test_baseline_reduces_variance():
  no_baseline = _per_sample_gradients(0.0, num=4000).var(0).sum()
  with_baseline = _per_sample_gradients(float(PROBS @ REWARD), num=4000).var(0).sum()
  assert with_baseline < no_baseline / 10


def test_baselines_track_the_reward():
  b = jnp.float32(0.0)
  for _ in range(200):
    b = hard.moving_average_baseline(b, jnp.float32([2.0, 4.0]), decay=0.9)
  np.testing.assert_allclose(b, 3.0, rtol=1e-5)
  grad = jax.grad(lambda b: hard.baseline_loss(jnp.float32(3.0), b))(jnp.float32(1.0))
  np.testing.assert_allclose(grad, -4.0)


def test_gumbel_estimator_draws_the_same_sample_and_differentiates_the_relaxation():
  """Forward: the REINFORCE sample's one-hot context. Backward to the scores: the gradient
  of softmax((theta + g) / tau) . (V c), worked out here from the softmax Jacobian."""
  rng, tau = jax.random.key(4), 0.5
  values = np.random.default_rng(3).normal(size=(4, 3))
  c = np.array([0.5, -1.0, 2.0])
  plain, out = jax.jit(lambda s, v: (hard.hard_attend(rng, s, v), hard.hard_attend(
      rng, s, v, estimator="gumbel", temperature=tau)))(jnp.float32(SCORES[None]),
                                                         jnp.float32(values))
  f = lambda theta, v: jnp.sum(
      hard.hard_attend(rng, theta[None], v, estimator="gumbel", temperature=tau).context[0] * c)
  assert int(out.index[0]) == int(plain.index[0])
  np.testing.assert_allclose(out.context, plain.context, rtol=1e-6, atol=1e-7)
  g = np.asarray(jax.random.gumbel(rng, (1, 4), jnp.float32))[0]
  y = np.exp((SCORES + g) / tau - ((SCORES + g) / tau).max())
  y /= y.sum()
  jacobian = (np.diag(y) - np.outer(y, y)) / tau  # dy / d theta
  d_theta, d_values = jax.jit(jax.grad(f, argnums=(0, 1)))(jnp.float32(SCORES),
                                                           jnp.float32(values))
  np.testing.assert_allclose(d_theta, jacobian.T @ (values @ c), rtol=1e-4, atol=1e-6)
  want = np.zeros((4, 3))
  want[int(plain.index[0])] = c  # the values see the one-hot, as with REINFORCE
  np.testing.assert_allclose(d_values, want, atol=1e-6)


def test_gumbel_estimator_keeps_masked_positions_out():
  mask = jnp.array([[True, False, False, True]])
  theta = jnp.float32(SCORES)
  grad = jax.jit(jax.grad(lambda t: jnp.sum(hard.hard_attend(
      jax.random.key(0), t[None], jnp.eye(4), mask, estimator="gumbel").context)))(theta)
  assert grad[1] == grad[2] == 0.0 and np.any(np.asarray(grad) != 0)
  keys = jax.random.split(jax.random.key(5), 2000)
  index = jax.jit(jax.vmap(lambda r: hard.hard_attend(r, theta[None], jnp.eye(4), mask,
                                                      estimator="gumbel").index[0]))(keys)
  assert set(np.unique(np.asarray(index))) == {0, 3}


def test_unknown_estimator_is_named():
  with pytest.raises(ValueError, match="estimator 'vimco' is unknown; known: reinforce, gumbel"):
    hard.hard_attend(None, jnp.float32(SCORES[None]), jnp.eye(4), estimator="vimco")
