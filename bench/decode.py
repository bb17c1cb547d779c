"""Benchmark 4: decoding speed, KV cache vs recomputing the prefix, beam vs greedy.

The LM of benchmark 3 (d_model 256, 4 layers, 4 heads, vocabulary 8192)
greedily decodes 128 tokens for 16 sequences from BOS, through the shared
step interface and `decode.greedy`, in one jitted `lax.while_loop`:

  cached     `DecoderOnlyLM.decode_step`: one token per step against the KV cache.
  recompute  each step runs the full forward pass over the 128-token buffer
             (the tokens so far, pads after them; causal, so the pads change
             nothing) and reads the logits at the current position: what a
             model without a cache has to do under jit's static shapes.
  beam k=4   `decode.beam_search` with the cached step, 16 x 4 hypotheses.

EOS is set to an id the model never emits, so every run decodes all 128
steps. Times are per decoded token position (one step of the whole batch).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax import decode
from bench import harness, transformer_lm

NAME = "decode"
STEPS, BATCH, BEAM = 128, 16, 4
BOS, NEVER = 1, -1  # NEVER: an EOS id no argmax can produce


def _lm(sizes: dict):
  model = transformer_lm.jax_model(sizes, max_len=STEPS)
  params = model.init(jax.random.key(0), jnp.zeros((1, STEPS), jnp.int32))["params"]
  return model, params


def step_functions(model, variables, steps: int):
  """(cached step, recompute step, initial recompute state for `batch`): the step interface."""
  def cached_step(state, tokens):
    return model.apply(variables, state, tokens, method=model.decode_step)

  def recompute_step(state, tokens):
    buffer = state["tokens"].at[:, state["t"]].set(tokens)  # [batch, steps]
    logits = model.apply(variables, buffer)  # [batch, steps, vocab]
    return logits[:, state["t"]], {"tokens": buffer, "t": state["t"] + 1}

  def recompute_state(batch):
    return {"tokens": jnp.zeros((batch, steps), jnp.int32), "t": jnp.int32(0)}

  return cached_step, recompute_step, recompute_state


def decoders(sizes: dict = transformer_lm.SIZES, steps: int = STEPS, batch: int = BATCH,
             beam: int = BEAM):
  """Jitted zero-argument decoders: {'cached', 'recompute', 'beam'} -> tokens."""
  model, params = _lm(sizes)
  variables = {"params": params}
  cached_step, recompute_step, recompute_state = step_functions(model, variables, steps)

  def cached():
    state = model.apply(variables, batch, method=model.init_decode_state)
    return decode.greedy(cached_step, state, batch, bos_id=BOS, eos_id=NEVER, max_len=steps)

  def recompute():
    return decode.greedy(recompute_step, recompute_state(batch), batch, bos_id=BOS,
                         eos_id=NEVER, max_len=steps)

  def beam_search():
    state = model.apply(variables, batch, method=model.init_decode_state)
    return decode.beam_search(cached_step, state, batch, beam_size=beam, bos_id=BOS,
                              eos_id=NEVER, max_len=steps)[0]

  return {"cached": jax.jit(cached), "recompute": jax.jit(recompute),
          "beam": jax.jit(beam_search)}


def run(repeats: int, budget_s: float) -> list[harness.Row]:
  fns = decoders()
  calls = {name: (lambda f=f: jax.block_until_ready(f())) for name, f in fns.items()}
  times = harness.measure(calls, repeats=repeats, warmup=1, budget_s=budget_s)
  per_token = {name: [s / STEPS for s in t] for name, t in times.items()}
  median = {name: float(np.median(t)) for name, t in per_token.items()}
  greedy_case = f"greedy, {STEPS} tokens, B={BATCH}"
  beam_case = f"beam k={BEAM} vs greedy, B={BATCH}"
  return [
      harness.Row(NAME, greedy_case, "jax KV cache", per_token["cached"], "jax recompute",
                  {"speedup": median["recompute"] / median["cached"]}),
      harness.Row(NAME, greedy_case, "jax recompute", per_token["recompute"]),
      harness.Row(NAME, beam_case, f"jax beam k={BEAM}", per_token["beam"], "jax greedy"),
      harness.Row(NAME, beam_case, "jax greedy", per_token["cached"]),
  ]
