"""Hard (stochastic) attention and its REINFORCE surrogate (Xu et al. 2015).

Soft attention returns the expectation sum_j a_j v_j. Hard attention samples
one position j ~ Categorical(a) and returns v_j. Sampling has no gradient, so
the scores are trained with the score-function (REINFORCE, Williams 1992)
estimate of d E[R] / d theta:

    (R - b) * d log a_j / d theta,

which is unbiased for any baseline b that does not depend on the sample;
a good b (a moving average of R, or a learned predictor of it) lowers the
variance. `reinforce_surrogate` is a loss whose gradient is minus that
estimate, so minimising it ascends the expected reward.

The straight-through Gumbel-softmax estimator (Jang et al. 2017) is the
low-variance, biased alternative: the position is drawn by the Gumbel-max trick
(argmax of log a + g, g ~ Gumbel(0, 1): an exact sample of Categorical(a)), the
forward pass uses its one-hot as REINFORCE does, and the backward pass uses the
gradient of the relaxed weights softmax((log a + g) / tau) in its place, so the
scores learn through the context like soft attention's, with no reward.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from attention_jax.attention import masks

Array = jax.Array

ESTIMATORS = ("reinforce", "gumbel")


class HardAttention(NamedTuple):
  context: Array  # [..., q_len, d_v]: the selected value (zeros on fully masked rows)
  index: Array  # int32 [..., q_len]: the selected position
  log_prob: Array  # float32 [..., q_len]: log a_index (0 on fully masked rows)
  weights: Array  # float32 [..., q_len, kv_len]: the distribution sampled from


def hard_attend(rng: Array | None, scores: Array, values: Array,
                mask: Array | None = None, estimator: str = "reinforce",
                temperature: float = 1.0) -> HardAttention:
  """Select one position per query: sampled from the weights, or the argmax.

  Args:
    rng: a PRNG key to sample with; None takes the argmax (evaluation).
    scores: `[..., q_len, kv_len]`, from any function in `scores.py`.
    values: `[..., kv_len, d_v]`.
    mask: bool, broadcastable to `scores`; True = attend.
    estimator: 'reinforce' (the context has no gradient to the scores; they
      learn through `log_prob` and the surrogate) or 'gumbel' (straight
      through: the context's gradient reaches the scores through the relaxed
      weights at `temperature`).
    temperature: 'gumbel' only: tau of the relaxation (> 0).

  Returns:
    A `HardAttention`; the same sample for both estimators, given `rng`.
  """
  if estimator not in ESTIMATORS:
    raise ValueError(f"hard attention estimator {estimator!r} is unknown; known: "
                     f"{', '.join(ESTIMATORS)}")
  log_weights = masks.masked_log_softmax(scores, mask)  # [..., q_len, kv_len]
  live = jnp.isfinite(jnp.max(log_weights, axis=-1))  # some position may be attended
  noisy = log_weights
  if rng is not None:  # Gumbel-max: argmax of the perturbed log-weights ~ Categorical
    noisy = log_weights + jax.random.gumbel(rng, log_weights.shape, log_weights.dtype)
  index = jnp.argmax(noisy, axis=-1)
  one_hot = jax.nn.one_hot(index, scores.shape[-1], dtype=values.dtype)
  one_hot = one_hot * live[..., None].astype(values.dtype)
  if estimator == "gumbel" and rng is not None:
    relaxed = masks.masked_softmax(noisy / temperature, mask).astype(values.dtype)
    one_hot = one_hot + relaxed - jax.lax.stop_gradient(relaxed)  # forward: the one-hot
  context = jnp.einsum("...qk,...kd->...qd", one_hot, values)
  picked = jnp.take_along_axis(log_weights, index[..., None], axis=-1)[..., 0]
  log_prob = jnp.where(live, picked, 0.0)
  return HardAttention(context, index.astype(jnp.int32), log_prob, jnp.exp(log_weights))


def reinforce_surrogate(log_prob: Array, reward: Array, baseline: Array | float = 0.0) -> Array:
  """Per-sample surrogate loss -(R - b) log p, with R and b held constant.

  Its gradient with respect to the parameters behind `log_prob` is an
  unbiased Monte Carlo estimate of -d E[R] / d theta. Sum `log_prob` over the
  decisions of one sample (e.g. over decoder steps) before calling this.

  Args:
    log_prob: log-probability of the sampled choices, any shape.
    reward: the reward of each sample, broadcastable to `log_prob`.
    baseline: a constant or per-sample estimate of E[R].
  """
  advantage = jax.lax.stop_gradient(reward - baseline)
  return -advantage * log_prob


def baseline_loss(reward: Array, baseline: Array) -> Array:
  """Squared error that trains a learned baseline to predict the reward."""
  return jnp.square(jax.lax.stop_gradient(reward) - baseline)


def moving_average_baseline(baseline: Array, reward: Array, decay: float = 0.9) -> Array:
  """Exponential moving average of the mean reward: b <- decay b + (1 - decay) mean R."""
  return decay * baseline + (1.0 - decay) * jnp.mean(jax.lax.stop_gradient(reward))
