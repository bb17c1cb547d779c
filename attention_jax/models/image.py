"""Image to text: a small CNN's feature grid, attended by the RNN or the Transformer decoder.

    inputs float [B, W, H] (an image's columns, as the pipeline pads them: zero = black),
    input_lengths [B] (real columns)
      -> CNN: `len(channels)` stages of two 3x3 convolutions (the second of stride 2), each
         followed by a per-position LayerNorm and a ReLU; 2-D sinusoidal positions (half the
         channels encode the column, half the row) added; a linear map to the decoder size
      -> grid [B, W' * H', hidden], W' = ceil(W / 2^stages), H' likewise, flattened column by
         column, so a strip's real positions are a prefix of `grid_lengths(input_lengths)`
         = ceil(width / 2^stages) * H' (the decoders' attention masks are length masks).

Padding never changes a real position's features: the input and every convolution's
output are zeroed beyond the real columns before the next convolution reads them (as the
speech front end does), the explicit padding of one keeps every window where it is on the
unpadded image, and the LayerNorm is per position (a batch or group norm would mix
padding into the statistics).

`ImageRNN` is `RNNSeq2Seq`'s decoder over the grid (every score function, Alignment kind
and cell), its initial state the bridged mean of the real grid positions, plus

  context_gate  (Xu et al. 2015, 4.2.1) beta_t = sigmoid(w_beta h_{t-1}) scales the
                context of 'bahdanau' and 'hard' attention.
  'hard'        Xu et al.'s stochastic attention with their decoder: the query is h_{t-1}
                and the context enters the cell with y_{t-1}, as with 'bahdanau' (the text
                model's 'hard' is Luong-style). With `expected_context_prob` p, a training
                minibatch uses the expected context sum_i alpha_i a_i instead of the sample
                with probability p (their 0.5); its REINFORCE log-prob is then 0.
  sentinel      adaptive attention (Lu et al. 2017, "Knowing When to Look"), on 'luong'
                attention with an LSTM: s_t = g_t * tanh(m_t), g_t = sigmoid(W [x_t; h_{t-1}]),
                m_t the cell's memory, is one more candidate of the softmax (as W_s s_t, a
                key and value of the grid's size); its weight beta_t says how much of the
                context came from the language model rather than the image.

`ImageTransformer` is `EncoderDecoderTransformer` with the grid (optionally refined by
`grid_blocks` self-attention blocks) as the memory of its cross-attention.

Sown in 'intermediates': 'attention_weights' float32 [B, T, W'*H'] (the RNN's; the grid
part with the sentinel) and 'sentinel_beta' [B, T]. `grid_shape(width)` gives (W', H').
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.attention import masks
from attention_jax.layers import recurrent
from attention_jax.layers.common import dense
from attention_jax.layers.transformer import sinusoidal_table
from attention_jax.models.rnn_seq2seq import RNNSeq2Seq
from attention_jax.models.transformer import EncoderDecoderTransformer

Array = jax.Array


def _ceil_div(n, d):
  return -(-n // d)


def grid_positions(width: int, height: int, features: int) -> Array:
  """float32 `[width, height, features]`: the column's sinusoids in the first half of the
  features, the row's in the second."""
  half = features // 2
  cols = jnp.asarray(sinusoidal_table(width, half))[:, None, :]
  rows = jnp.asarray(sinusoidal_table(height, features - half))[None, :, :]
  return jnp.concatenate([jnp.broadcast_to(cols, (width, height, half)),
                          jnp.broadcast_to(rows, (width, height, features - half))], -1)


class CNNEncoder(nn.Module):
  """Columns `[B, W, H]` -> (grid `[B, W'*H', features]`, grid lengths `[B]`)."""
  channels: Sequence[int]
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, lengths: Array) -> tuple[Array, Array]:
    # Zero the padding columns: the first convolution's windows at the last real column
    # read the next one, which must be what an unpadded image's border gives.
    valid = masks.valid_from_lengths(lengths, x.shape[1])
    x = (x * valid[:, :, None]).astype(self.dtype)[..., None]  # [B, W, H, 1]
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    for i, channels in enumerate(self.channels):
      for j, stride in enumerate((1, 2)):
        x = nn.Conv(channels, (3, 3), strides=stride, padding=((1, 1), (1, 1)),
                    name=f"conv_{i}_{j}", **kw)(x)
        x = nn.relu(nn.LayerNorm(name=f"norm_{i}_{j}", **kw)(x))
        lengths = _ceil_div(lengths, stride)
        valid = masks.valid_from_lengths(lengths, x.shape[1])
        x = x * valid[:, :, None, None].astype(x.dtype)
    batch, width, height, channels = x.shape
    x = x + grid_positions(width, height, channels).astype(x.dtype)
    x = dense(self.features, ("conv", "hidden"), name="proj", **kw)(x)
    return x.reshape(batch, width * height, self.features), lengths * height


class _ImageEncoding:
  """What both image models share: the CNN and the image checks."""

  def _cnn(self, features: int) -> CNNEncoder:
    return CNNEncoder(tuple(self.channels), features, self.dtype, self.param_dtype, name="cnn")

  @property
  def grid_scale(self) -> int:
    """Pixels per grid cell along each axis: every CNN stage halves both."""
    return 2 ** len(self.channels)

  def grid_shape(self, width):
    """(W', H'): the grid's columns for `width` pixel columns (an int or an array), and rows."""
    return _ceil_div(width, self.grid_scale), _ceil_div(self.image_height, self.grid_scale)

  def grid_lengths(self, input_lengths: Array) -> Array:
    """Real grid positions `[B]` of images `input_lengths` columns wide (a length prefix)."""
    columns, rows = self.grid_shape(input_lengths)
    return columns * rows

  def _check_image(self, inputs: Array) -> None:
    if inputs.ndim != 3 or inputs.shape[-1] != self.image_height:
      raise ValueError(f"image inputs must be float [batch, width, {self.image_height}] "
                       f"(columns of model.image_height={self.image_height} pixels), got "
                       f"shape {inputs.shape}")
    if not jnp.issubdtype(inputs.dtype, jnp.floating):
      raise ValueError(f"image inputs must be float (pixels / 255), got {inputs.dtype}")


class ImageRNN(_ImageEncoding, RNNSeq2Seq):
  """RNNSeq2Seq over a CNN grid; fields as RNNSeq2Seq's (the source ones unused) plus these."""
  image_height: int = 32  # pixel rows of every image (the data set's feature_dim)
  channels: Sequence[int] = (32, 64, 64)  # per CNN stage; each halves width and height
  context_gate: bool = False  # Xu et al.'s beta_t on 'bahdanau' and 'hard' contexts
  sentinel: bool = False  # Lu et al.'s visual sentinel ('luong', LSTM)

  def __post_init__(self):
    if self.sentinel and (self.attention != "luong" or self.cell != "lstm"):
      raise ValueError("model.sentinel needs model.attention='luong' and model.cell='lstm' "
                       f"(Lu et al.'s adaptive attention), got {self.attention!r} and "
                       f"{self.cell!r}")
    if self.context_gate and self.attention not in ("bahdanau", "hard"):
      raise ValueError("model.context_gate gates the context of model.attention 'bahdanau' "
                       f"or 'hard' (Xu et al.'s decoder), got {self.attention!r}")
    if self.sentinel and self.score in ("location", "location_aware"):
      raise ValueError(f"model.sentinel cannot use model.score={self.score!r}: the sentinel "
                       "has no position; use a content score")
    super().__post_init__()

  @property
  def _feeds(self) -> bool:
    return self.input_feeding and self.attention in ("luong", "local")

  @property
  def _xu(self) -> bool:
    return self.attention in ("bahdanau", "hard")

  def setup(self):
    super().setup()
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.cnn = self._cnn(self.hidden_dim)
    if self.context_gate:
      self.gate = dense(1, ("hidden", None), name="context_gate", **kw)
    if self.sentinel:
      self.sentinel_gate = dense(self.hidden_dim, ("gates", "hidden"), name="sentinel_gate",
                                 **kw)
      self.sentinel_proj = dense(self.hidden_dim, ("hidden", "memory"), name="sentinel_proj",
                                 use_bias=False, **kw)

  def encode(self, inputs: Array, input_lengths: Array, *, deterministic: bool = True):
    """{'memory': the grid, 'final': every layer's carry from its mean over real positions}."""
    self._check_image(inputs)
    memory, lengths = self.cnn(inputs, input_lengths)
    memory = self.dropout(memory, deterministic=deterministic)
    weights = masks.valid_from_lengths(lengths, memory.shape[1])[..., None]
    pooled = jnp.sum(memory * weights, 1) / jnp.maximum(jnp.sum(weights, 1), 1)
    carry = (pooled, pooled) if self.cell == "lstm" else pooled  # what the bridges read
    return {"memory": memory, "final": tuple(carry for _ in range(self.num_layers))}

  def init_decode_state(self, encoded, input_lengths: Array):
    return super().init_decode_state(encoded, self.grid_lengths(input_lengths))

  def _step(self, state, x_proj: Array, deterministic: bool):
    if self.sentinel:
      return self._adaptive_step(state, x_proj, deterministic)
    if not self._xu:
      return super()._step(state, x_proj, deterministic)
    h_prev = recurrent.carry_output(self.cell, state["carry"][-1])
    out = self._attend(h_prev, state, deterministic)
    context, log_prob = out.context, out.log_prob
    if self.attention == "hard":
      context, log_prob = self._hard_context(out, state)
    if self.context_gate:
      context = context * jax.nn.sigmoid(self.gate(h_prev))
    carry, s = self.decoder(state["carry"], x_proj, context, deterministic=deterministic)
    features = jnp.tanh(self.combine(jnp.concatenate([s, context], axis=-1)))
    state = {**state, "carry": carry}
    if self._location_aware:
      state["previous_alignment"] = out.weights
    return state, (features, out.weights, log_prob)

  def _adaptive_step(self, state, x_proj: Array, deterministic: bool):
    """Lu et al.'s step: the cell, the sentinel, then attention over grid + sentinel."""
    h_prev = recurrent.carry_output(self.cell, state["carry"][-1])
    carry, s = self.decoder(state["carry"], x_proj, state.get("feed"),
                            deterministic=deterministic)
    gate = jax.nn.sigmoid(self.sentinel_gate(jnp.concatenate([x_proj, h_prev], -1)))
    sentinel = self.sentinel_proj(gate * jnp.tanh(carry[-1][0]))[:, None]  # [B, 1, hidden]
    memory = jnp.concatenate([state["memory"], sentinel], 1)
    mask = jnp.concatenate([state["mask"], jnp.ones_like(state["mask"][:, :1])], 1)
    keys = state.get("keys")
    if keys is not None:
      keys = jnp.concatenate([keys, self.align.project_keys(sentinel)], 1)
    out = self.align(s, memory, memory, mask, deterministic=deterministic, projected_keys=keys)
    features = jnp.tanh(self.combine(jnp.concatenate([out.context, s], axis=-1)))
    state = {**state, "carry": carry}
    if self._feeds:
      state["feed"] = features.astype(state["feed"].dtype)
    return state, (features, out.weights, None)  # the sentinel's weight last: see _sow

  def _sow(self, weights: Array | None, log_prob: Array | None) -> None:
    if self.sentinel:  # [..., grid + 1]: the grid's weights, and beta_t apart
      self.sow("intermediates", "sentinel_beta", weights[..., -1])
      weights = weights[..., :-1]
    super()._sow(weights, log_prob)


class ImageTransformer(_ImageEncoding, EncoderDecoderTransformer):
  """The Transformer decoder, cross-attending over the CNN grid."""
  image_height: int = 32
  channels: Sequence[int] = (32, 64, 64)
  grid_blocks: int = 0  # self-attention blocks over the grid (0: the CNN alone);
  # encoder_layers is not read: the CNN is the encoder

  def setup(self):
    self._check()
    self.target_embed = self._embed(self.vocab_size, "target_embed")
    self.cnn = self._cnn(self.d_model)
    if self.grid_blocks:
      self.encoder = self._stack(False, self.grid_blocks, "encoder")
    self.decoder = self._stack(True, self.num_layers, "decoder")
    self.output = self._output_layer()
    self.dropout = nn.Dropout(self.dropout_rate)

  def encode(self, inputs: Array, input_lengths: Array, *, deterministic: bool = True) -> Array:
    """The grid `[B, W'*H', d_model]`."""
    self._check_image(inputs)
    grid, lengths = self.cnn(inputs, input_lengths)
    grid = self.dropout(grid, deterministic=deterministic)
    if self.grid_blocks:
      mask = masks.padding_mask(masks.valid_from_lengths(lengths, grid.shape[1]))
      grid = self.encoder(grid, self_mask=mask, deterministic=deterministic)[0]
    return grid

  def __call__(self, inputs: Array, input_lengths: Array, targets_in: Array, *,
               deterministic: bool = True) -> Array:
    encoded = self.encode(inputs, input_lengths, deterministic=deterministic)
    return self._decode(targets_in, encoded, self.grid_lengths(input_lengths), None, None,
                        deterministic)[0]

  def init_decode_state(self, encoded: Array, input_lengths: Array) -> dict:
    return super().init_decode_state(encoded, self.grid_lengths(input_lengths))
