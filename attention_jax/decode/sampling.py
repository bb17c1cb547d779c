"""Greedy decoding and temperature / top-k sampling against a step function.

Every model family implements the same step interface:

    step_fn(state, tokens [batch] int32) -> (logits [batch, vocab], new state)

where every leaf of `state` leads with the batch axis (RNN: the recurrent
carry; Transformer: the KV caches and positions). Typically

    step_fn = lambda s, t: model.apply(variables, s, t, method=model.decode_step)

The loop is a `lax.while_loop` that stops once every sequence has emitted EOS,
so it can be jitted (pass the step function as a closure or static argument).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
StepFn = Callable[[Any, Array], tuple[Array, Any]]


def _decode_loop(step_fn: StepFn, state: Any, choose: Callable[[Array, Array], Array],
                 rng: Array, batch: int, bos_id: int, eos_id: int, max_len: int,
                 pad_id: int, first_tokens: Array | None = None) -> Array:
  """Run `choose(logits, rng) -> tokens` until EOS or `max_len`; returns `[batch, max_len]`.

  The first step is fed `first_tokens [batch]` (a prompt's last token), else BOS.
  """

  def cond(carry):
    t, _, _, _, finished, _ = carry
    return (t < max_len) & ~jnp.all(finished)

  def body(carry):
    t, last, out, state, finished, rng = carry
    rng, key = jax.random.split(rng)
    logits, state = step_fn(state, last)
    tokens = jnp.where(finished, pad_id, choose(logits.astype(jnp.float32), key))
    out = out.at[:, t].set(tokens)
    return t + 1, tokens, out, state, finished | (tokens == eos_id), rng

  out = jnp.full((batch, max_len), pad_id, jnp.int32)
  first = (jnp.full((batch,), bos_id, jnp.int32) if first_tokens is None
           else jnp.asarray(first_tokens, jnp.int32))
  carry = (0, first, out, state, jnp.zeros((batch,), bool), rng)
  return lax.while_loop(cond, body, carry)[2]


def greedy(step_fn: StepFn, state: Any, batch: int, *, bos_id: int, eos_id: int,
           max_len: int, pad_id: int = 0, first_tokens: Array | None = None) -> Array:
  """Argmax decoding. Returns tokens `[batch, max_len]`: EOS included, then pads."""
  choose = lambda logits, _: jnp.argmax(logits, axis=-1).astype(jnp.int32)
  return _decode_loop(step_fn, state, choose, jax.random.key(0), batch, bos_id, eos_id,
                      max_len, pad_id, first_tokens)


def sample(step_fn: StepFn, state: Any, batch: int, rng: Array, *, bos_id: int, eos_id: int,
           max_len: int, temperature: float = 1.0, top_k: int | None = None,
           pad_id: int = 0, first_tokens: Array | None = None) -> Array:
  """Ancestral sampling from softmax(logits / temperature), optionally among the top k.

  Returns tokens `[batch, max_len]`: EOS included, then pads.
  """
  if temperature <= 0:
    raise ValueError(f"temperature must be > 0 (use greedy for 0), got {temperature}")

  def choose(logits, key):
    logits = logits / temperature
    if top_k is not None:
      kth = lax.top_k(logits, top_k)[0][..., -1:]  # [batch, 1]: the k-th largest logit
      logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)

  return _decode_loop(step_fn, state, choose, rng, batch, bos_id, eos_id, max_len, pad_id,
                      first_tokens)
