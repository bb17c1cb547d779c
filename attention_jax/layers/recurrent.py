"""Recurrent encoders and decoder stacks, scanned with `nn.scan` over time.

The cells compute exactly `nn.GRUCell` and `nn.OptimizedLSTMCell` (tests
compare them with the same weights), split in two halves so the input
projection W_i x + b of every time step is one matmul before the scan; only
the recurrent half W_h h runs inside the loop. `unroll` stays 1: on the 2-core
CPU, unroll > 1 made the backward pass about 2x slower.

Variable lengths: at a step past an example's length the carry is left
unchanged and the output is zero, so padding never changes a real position's
output and the final carry is the state after the last real token. The
backward direction of a bidirectional layer reverses each sequence within
its length (pads stay at the end), scans forward and reverses back.

Carries: GRU `h [batch, hidden]`; LSTM `(c, h)`, each `[batch, hidden]`.
Parameter axes: input kernels ('embed', 'gates') and recurrent kernels
('hidden', 'gates'), 'gates' being the concatenated gates (3 or 4 x hidden).
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.attention import masks
from attention_jax.layers.common import dense

Array = jax.Array
Carry = Any  # Array (GRU) or tuple (c, h) (LSTM)

CELLS = ("gru", "lstm")
NUM_GATES = {"gru": 3, "lstm": 4}


def check_cell(cell: str, owner: str = "cell") -> None:
  if cell not in CELLS:
    raise ValueError(f"{owner}={cell!r} is unknown; known: {', '.join(CELLS)}")


def init_carry(cell: str, batch: int, features: int, dtype=jnp.float32) -> Carry:
  """The zero carry of `cell` for `batch` sequences."""
  check_cell(cell)
  zeros = jnp.zeros((batch, features), dtype)
  return (zeros, zeros) if cell == "lstm" else zeros


def carry_output(cell: str, carry: Carry) -> Array:
  """The hidden state h `[batch, hidden]` inside a carry."""
  return carry[1] if cell == "lstm" else carry


def reverse_within_length(x: Array, lengths: Array) -> Array:
  """Reverses `x [batch, time, ...]` along time inside each length; pads stay put."""
  t = jnp.arange(x.shape[1])[None, :]  # [1, time]
  lengths = jnp.asarray(lengths)[:, None]
  index = jnp.where(t < lengths, lengths - 1 - t, t)  # [batch, time]
  index = index.reshape(index.shape + (1,) * (x.ndim - 2))
  return jnp.take_along_axis(x, index, axis=1)


def _stacked_init(init: Callable, gates: int) -> Callable:
  """Initialises a [in, gates * hidden] kernel as `gates` independent blocks,
  as the flax cells do with one kernel per gate (orthogonal per gate)."""
  def stacked(key, shape, dtype=jnp.float32):
    blocks = [init(k, shape[:-1] + (shape[-1] // gates,), dtype)
              for k in jax.random.split(key, gates)]
    return jnp.concatenate(blocks, axis=-1)
  return stacked


def input_projection(cell: str, features: int, dtype, param_dtype, name: str | None = None,
                     use_bias: bool = True) -> nn.Dense:
  """The input half of a cell: x -> W_i x + b, all gates at once `[..., gates * hidden]`."""
  return dense(NUM_GATES[cell] * features, ("embed", "gates"), dtype=dtype,
               param_dtype=param_dtype, name=name, use_bias=use_bias)


class GRUStep(nn.Module):
  """The recurrent half of `nn.GRUCell`; the input half comes pre-projected.

  r = sigmoid(x_r + W_hr h), z = sigmoid(x_z + W_hz h),
  n = tanh(x_n + r * (W_hn h + b_hn)), h' = (1 - z) n + z h,
  where x = W_i x + b_i for the three gates (`input_projection`).
  """
  features: int  # hidden size
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # parameter storage dtype

  @nn.compact
  def __call__(self, h: Array, x_proj: Array) -> tuple[Array, Array]:
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(
            _stacked_init(nn.initializers.orthogonal(), 3), ("hidden", "gates")),
        (self.features, 3 * self.features), self.param_dtype)
    bias_hn = self.param("bias_hn", nn.with_logical_partitioning(
        nn.initializers.zeros_init(), ("hidden",)), (self.features,), self.param_dtype)
    h_c, x_proj, kernel, bias_hn = nn.dtypes.promote_dtype(
        h, x_proj, kernel, bias_hn, dtype=self.dtype)
    x_r, x_z, x_n = jnp.split(x_proj, 3, axis=-1)  # each [batch, hidden]
    h_r, h_z, h_n = jnp.split(h_c @ kernel, 3, axis=-1)
    r = jax.nn.sigmoid(x_r + h_r)
    z = jax.nn.sigmoid(x_z + h_z)
    n = jnp.tanh(x_n + r * (h_n + bias_hn))
    new_h = ((1.0 - z) * n + z * h_c).astype(h.dtype)
    return new_h, new_h


class LSTMStep(nn.Module):
  """The recurrent half of `nn.OptimizedLSTMCell` (gates i, f, g, o in that order).

  c' = f c + i g, h' = o tanh(c'), with each gate's pre-activation
  x_gate + W_h,gate h; the biases live in the input projection.
  """
  features: int  # hidden size
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # parameter storage dtype

  @nn.compact
  def __call__(self, carry: tuple[Array, Array], x_proj: Array):
    c, h = carry
    kernel = self.param(
        "kernel", nn.with_logical_partitioning(
            _stacked_init(nn.initializers.orthogonal(), 4), ("hidden", "gates")),
        (self.features, 4 * self.features), self.param_dtype)
    h_c, c_c, x_proj, kernel = nn.dtypes.promote_dtype(h, c, x_proj, kernel, dtype=self.dtype)
    gates = x_proj + h_c @ kernel  # [batch, 4 * hidden]
    i, f, g, o = jnp.split(gates, 4, axis=-1)
    new_c = jax.nn.sigmoid(f) * c_c + jax.nn.sigmoid(i) * jnp.tanh(g)
    new_h = jax.nn.sigmoid(o) * jnp.tanh(new_c)
    new_c, new_h = new_c.astype(c.dtype), new_h.astype(h.dtype)
    return (new_c, new_h), new_h


def make_step(cell: str, features: int, dtype, param_dtype, name: str | None = None) -> nn.Module:
  check_cell(cell)
  step = GRUStep if cell == "gru" else LSTMStep
  return step(features, dtype=dtype, param_dtype=param_dtype, name=name)


def scan_time(body: Callable, module: nn.Module, carry, xs, **kwargs):
  """`nn.scan` of `body(module, carry, x_t) -> (carry, y_t)` over axis 1 of `xs`.

  Parameters are shared by all steps; dropout and sampling draw fresh
  randomness at each step.
  """
  scan = nn.scan(body, variable_broadcast="params",
                 split_rngs={"params": False, "dropout": True, "sample": True},
                 in_axes=1, out_axes=1, **kwargs)
  return scan(module, carry, xs)


class RNNLayer(nn.Module):
  """One recurrent layer in one direction over a padded batch."""
  cell: str = "lstm"  # 'gru' or 'lstm'
  features: int = 128  # hidden size
  reverse: bool = False  # read each sequence backwards within its length
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # parameter storage dtype

  @nn.compact
  def __call__(self, inputs: Array, lengths: Array) -> tuple[Array, Carry]:
    """Args: inputs `[batch, time, d_in]`, lengths int `[batch]`.

    Returns outputs `[batch, time, hidden]` (zero at pads) and the final carry.
    """
    check_cell(self.cell, "RNNLayer.cell")
    batch, time = inputs.shape[:2]
    valid = masks.valid_from_lengths(lengths, time)  # [batch, time]
    x = input_projection(self.cell, self.features, self.dtype, self.param_dtype,
                         name="input")(inputs)  # [batch, time, gates * hidden]
    if self.reverse:
      x = reverse_within_length(x, lengths)
    step = make_step(self.cell, self.features, self.dtype, self.param_dtype, name="cell")

    def body(step, carry, xs):
      x_t, valid_t = xs
      new, h = step(carry, x_t)
      keep = valid_t[:, None]  # [batch, 1]
      carry = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new, carry)
      return carry, jnp.where(keep, h, jnp.zeros_like(h))

    carry = init_carry(self.cell, batch, self.features, self.dtype)
    carry, outputs = scan_time(body, step, carry, (x, valid))  # outputs [batch, time, hidden]
    if self.reverse:
      outputs = reverse_within_length(outputs, lengths)
    return outputs, carry


class RNNEncoder(nn.Module):
  """Stacked, optionally bidirectional recurrent encoder.

  Returns the top layer's outputs `[batch, time, directions * hidden]` and,
  per layer, the final carry with both directions concatenated on features.
  """
  cell: str = "lstm"  # 'gru' or 'lstm'
  features: int = 128  # hidden size per direction
  num_layers: int = 1  # stacked layers; each reads the full output of the one below
  bidirectional: bool = False  # a backward layer beside each forward one
  dropout_rate: float = 0.0  # between layers
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # parameter storage dtype

  @nn.compact
  def __call__(self, inputs: Array, lengths: Array, *,
               deterministic: bool = True) -> tuple[Array, tuple[Carry, ...]]:
    layer = lambda reverse, name: RNNLayer(self.cell, self.features, reverse, self.dtype,
                                           self.param_dtype, name=name)
    x, finals = inputs, []
    for i in range(self.num_layers):
      if i > 0:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)
      out, final = layer(False, f"layer_{i}")(x, lengths)
      if self.bidirectional:
        out_b, final_b = layer(True, f"layer_{i}_backward")(x, lengths)
        out = jnp.concatenate([out, out_b], axis=-1)  # [batch, time, 2 * hidden]
        final = jax.tree.map(lambda f, b: jnp.concatenate([f, b], axis=-1), final, final_b)
      x = out
      finals.append(final)
    return x, tuple(finals)


class StackedCells(nn.Module):
  """One time step of a stack of cells: the decoder's recurrence.

  `project(tokens_embedded)` is layer 0's input projection of the tokens, run
  on all time steps at once before the scan (training) or on one step
  (decoding). `__call__(carries, x_proj, extra)` then runs one step: `extra`
  (an attention context or input-feeding vector, known only inside the loop)
  is projected there and added to layer 0's input. Two entry points share the
  parameters, hence `setup`.
  """
  cell: str = "lstm"  # 'gru' or 'lstm'
  features: int = 128  # hidden size
  num_layers: int = 1  # stacked cells
  dropout_rate: float = 0.0  # between layers
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32  # parameter storage dtype

  def setup(self):
    check_cell(self.cell, "StackedCells.cell")
    proj = lambda name, use_bias=True: input_projection(
        self.cell, self.features, self.dtype, self.param_dtype, name, use_bias)
    self.input = proj("input")
    self.extra_input = proj("extra_input", use_bias=False)  # only created when called
    self.layer_inputs = [proj(f"input_{i}") for i in range(1, self.num_layers)]
    self.cells = [make_step(self.cell, self.features, self.dtype, self.param_dtype,
                            name=f"cell_{i}") for i in range(self.num_layers)]
    self.dropout = nn.Dropout(self.dropout_rate)

  def project(self, x: Array) -> Array:
    """`[..., d_in]` -> `[..., gates * hidden]`: layer 0's token input, any leading axes."""
    return self.input(x)

  def initial_carries(self, batch: int) -> tuple[Carry, ...]:
    return tuple(init_carry(self.cell, batch, self.features, self.dtype)
                 for _ in range(self.num_layers))

  def __call__(self, carries: tuple[Carry, ...], x_proj: Array, extra: Array | None = None,
               *, deterministic: bool = True) -> tuple[tuple[Carry, ...], Array]:
    """One step. x_proj `[batch, gates * hidden]` from `project`; extra `[batch, d_extra]`.

    Returns the new carries and the top layer's output `[batch, hidden]`.
    """
    if extra is not None:
      x_proj = x_proj + self.extra_input(extra)
    new_carries = []
    for i, (step, carry) in enumerate(zip(self.cells, carries)):
      if i > 0:
        x_proj = self.layer_inputs[i - 1](self.dropout(h, deterministic=deterministic))
      carry, h = step(carry, x_proj)
      new_carries.append(carry)
    return tuple(new_carries), h
