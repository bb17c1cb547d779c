"""Pure train and eval steps: label-smoothed cross-entropy over real target tokens.

Batches are the data pipeline's dicts: `inputs [B,S]`, `input_lengths [B]`,
`decoder_inputs [B,T]` (BOS-shifted), `targets [B,T]`, `target_lengths [B]`,
`weights [B]` (0 on padding rows). Hard attention adds the REINFORCE
surrogate of `attention.hard` with reward = -NLL of each sequence and a
leave-one-out baseline (the mean reward of the other sequences: unbiased).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from attention_jax.attention import hard

Array = jax.Array


class TrainState(train_state.TrainState):
  """Step, params, optimizer state and the model's `apply` (static)."""


def token_mask(batch: dict) -> Array:
  """float32 `[B, T]`: 1 on real target tokens (EOS included) of real rows."""
  t = batch["targets"].shape[1]
  real = jnp.arange(t)[None, :] < batch["target_lengths"][:, None]
  return real.astype(jnp.float32) * batch["weights"][:, None]


def cross_entropy(logits: Array, targets: Array, label_smoothing: float) -> tuple[Array, Array]:
  """Per-token (smoothed loss, plain NLL), `[B, T]` each.

  The smoothed target puts 1 - eps on the label and eps / V on every class
  (Szegedy et al. 2016; Vaswani et al. 2017 use eps = 0.1).
  """
  logits = logits.astype(jnp.float32)
  lse = jax.nn.logsumexp(logits, axis=-1)
  nll = lse - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  if not label_smoothing:  # a Python float: at 0 skip a pass over [B, T, V], forward and backward
    return nll, nll
  smooth = lse - jnp.mean(logits, axis=-1)  # cross-entropy against the uniform distribution
  return (1.0 - label_smoothing) * nll + label_smoothing * smooth, nll


def _forward(params, state: TrainState, batch: dict, rng: Array | None, train: bool):
  rngs = None
  if rng is not None:
    rngs = {"dropout": jax.random.fold_in(rng, 0), "sample": jax.random.fold_in(rng, 1)}
  # Only the REINFORCE log-probs: asking for 'intermediates' would make every attention
  # layer compute its weights explicitly, in the hot path.
  logits, sown = state.apply_fn(
      {"params": params}, batch["inputs"], batch["input_lengths"], batch["decoder_inputs"],
      deterministic=not train, rngs=rngs, mutable=["reinforce"])
  return logits, sown.get("reinforce", {})


def _loss(params, state, batch, rng, label_smoothing):
  logits, sown = _forward(params, state, batch, rng, train=True)
  mask = token_mask(batch)
  tokens = jnp.maximum(jnp.sum(mask), 1.0)
  smoothed, nll = cross_entropy(logits, batch["targets"], label_smoothing)
  loss = jnp.sum(smoothed * mask) / tokens
  log_prob = sown["log_prob"][0] if "log_prob" in sown else None  # [B, T]: hard attention
  if log_prob is not None:
    reward = -jnp.sum(nll * mask, axis=1)  # [B]
    rows = batch["weights"]
    n = jnp.maximum(jnp.sum(rows), 2.0)
    baseline = (jnp.sum(reward * rows) - reward) / (n - 1.0)  # leave-one-out mean
    surrogate = hard.reinforce_surrogate(jnp.sum(log_prob * mask, axis=1), reward, baseline)
    loss = loss + jnp.sum(surrogate * rows) / tokens
  correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
  return loss, {"nll": jnp.sum(nll * mask) / tokens,
                "accuracy": jnp.sum(correct * mask) / tokens, "tokens": tokens}


def train_step(state: TrainState, batch: dict, rng: Array, *, label_smoothing: float = 0.0,
               schedule: optax.Schedule | None = None) -> tuple[TrainState, dict]:
  """One optimizer step. `rng` is the run's key; the step folds in its number, so a
  resumed run draws the same dropout and samples. Returns (new state, metrics)."""
  step_rng = jax.random.fold_in(rng, state.step)
  grad_fn = jax.value_and_grad(_loss, has_aux=True)
  (loss, metrics), grads = grad_fn(state.params, state, batch, step_rng, label_smoothing)
  new_state = state.apply_gradients(grads=grads)
  metrics = dict(metrics, loss=loss, l2_grads=optax.tree.norm(grads),
                 l2_params=optax.tree.norm(new_state.params))
  if schedule is not None:
    metrics["learning_rate"] = schedule(state.step)
  return new_state, metrics


def eval_step(state: TrainState, batch: dict, *, label_smoothing: float = 0.0) -> dict:
  """Teacher-forced sums over a batch: loss, NLL, correct tokens and token count."""
  logits, _ = _forward(state.params, state, batch, None, train=False)
  mask = token_mask(batch)
  smoothed, nll = cross_entropy(logits, batch["targets"], label_smoothing)
  correct = (jnp.argmax(logits, axis=-1) == batch["targets"]).astype(jnp.float32)
  return {"loss_sum": jnp.sum(smoothed * mask), "nll_sum": jnp.sum(nll * mask),
          "correct": jnp.sum(correct * mask), "tokens": jnp.sum(mask)}
