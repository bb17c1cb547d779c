"""Speech recognition: a convolutional front end, a recurrent or Transformer encoder, the
RNN attention decoder of `RNNSeq2Seq` and a CTC head over the encoder frames.

    inputs float [B, F, feature_dim] (log-mel frames), input_lengths [B] (frames)
      -> front end: two 3x3 convolutions of stride 2 (time and frequency subsampled by 4,
         as in Kim et al. 2017 and most joint CTC-attention systems), ReLU, a linear map
      -> encoder: 'lstm' (the RNNEncoder stack, bidirectional by default) or 'transformer'
         (self-attention blocks with sinusoidal positions; mean-pooled frames start the decoder)
      -> memory [B, ceil(F / 4), ...]: the attention decoder's keys and values, and the
         CTC head's input (a linear layer to the target vocabulary; blank = PAD = 0)

`__call__(inputs, input_lengths, targets_in, heads=...)` returns `{'attention': logits
[B, T, V], 'ctc': logits [B, F', V], 'frames': [B]}` for the heads asked for (both by
default, so `init` creates every parameter); the decoding interface (`encode`,
`init_decode_state`, `decode_step`) is RNNSeq2Seq's, with `ctc_logits(encoded)` beside it.
Padded frames never change a real frame's output: each convolution's output is zeroed
beyond the sequence's subsampled length before the next one reads it.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.attention import masks
from attention_jax.layers.common import dense
from attention_jax.layers.transformer import AddPositions, TransformerStack
from attention_jax.models.rnn_seq2seq import RNNSeq2Seq

Array = jax.Array

ENCODERS = ("lstm", "transformer")
SUBSAMPLING = 4  # two stride-2 convolutions


def subsampled_lengths(lengths: Array) -> Array:
  """Frames after the front end: ceil(ceil(n / 2) / 2)."""
  for _ in range(2):
    lengths = (lengths + 1) // 2
  return lengths


class FrontEnd(nn.Module):
  """Two 3x3 stride-2 convolutions over (time, frequency), then a linear map per frame."""
  channels: int
  features: int
  dtype: jnp.dtype = jnp.float32
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, lengths: Array) -> tuple[Array, Array]:
    x = x.astype(self.dtype)[..., None]  # [B, F, mel, 1]
    for i in range(2):
      # Explicit padding: 'SAME' pads by an amount that depends on the padded length's
      # parity, so a bucket's padding would move every window.
      x = nn.Conv(self.channels, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                  dtype=self.dtype,
                  param_dtype=self.param_dtype, name=f"conv_{i}")(x)
      lengths = (lengths + 1) // 2
      valid = masks.valid_from_lengths(lengths, x.shape[1])  # [B, F_i]
      x = nn.relu(x) * valid[:, :, None, None].astype(x.dtype)
    x = x.reshape(x.shape[0], x.shape[1], -1)  # [B, F', mel' * channels]
    return dense(self.features, ("mel", "hidden"), dtype=self.dtype,
                 param_dtype=self.param_dtype, name="proj")(x), lengths


class SpeechSeq2Seq(RNNSeq2Seq):
  """RNNSeq2Seq over log-mel frames, with a CTC head; fields as RNNSeq2Seq's plus these."""
  feature_dim: int = 80  # mel bins per frame
  frontend_channels: int = 32  # channels of both convolutions
  encoder_type: str = "lstm"  # 'lstm' or 'transformer'
  num_heads: int = 4  # transformer encoder
  d_ff: int = 512  # transformer encoder feed-forward size
  max_frames: int = 4096  # transformer encoder: longest input (its positional table, / 4)

  def __post_init__(self):
    if self.encoder_type not in ENCODERS:
      raise ValueError(f"model.encoder_type={self.encoder_type!r} is unknown; known: "
                       f"{', '.join(ENCODERS)}")
    if self.encoder_type == "transformer" and self.bidirectional:
      raise ValueError("model.bidirectional is for the lstm encoder; set it False with "
                       "model.encoder_type='transformer'")
    super().__post_init__()

  def setup(self):
    super().setup()
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.frontend = FrontEnd(self.frontend_channels, self.hidden_dim, name="frontend", **kw)
    if self.encoder_type == "transformer":
      self.positions = AddPositions("sinusoidal", -(-self.max_frames // SUBSAMPLING))
      block = dict(num_heads=self.num_heads, head_dim=self.hidden_dim // self.num_heads,
                   d_ff=self.d_ff, dropout_rate=self.dropout_rate)
      self.self_attention = TransformerStack(self.num_layers, block, name="transformer", **kw)
    self.ctc_head = dense(self.vocab_size, ("memory", "vocab"), name="ctc_head", **kw)

  def encode(self, inputs: Array, input_lengths: Array, *, deterministic: bool = True):
    """{'memory': [B, F', ...], 'final': per-layer carries, 'frames': [B] (F' per row)}."""
    if inputs.ndim != 3 or inputs.shape[-1] != self.feature_dim:
      raise ValueError(f"speech inputs must be float [batch, frames, {self.feature_dim}], "
                       f"got shape {inputs.shape}")
    x, frames = self.frontend(inputs, input_lengths)
    x = self.dropout(x, deterministic=deterministic)
    if self.encoder_type == "lstm":
      memory, final = self.encoder(x, frames, deterministic=deterministic)
    else:
      memory, final = self._transformer(x, frames, deterministic)
    return {"memory": memory, "final": final, "frames": frames}

  def _transformer(self, x: Array, frames: Array, deterministic: bool):
    valid = masks.valid_from_lengths(frames, x.shape[1])
    memory = self.self_attention(self.positions(x), self_mask=masks.padding_mask(valid),
                                 deterministic=deterministic)[0]
    weights = valid[..., None].astype(memory.dtype)
    pooled = jnp.sum(memory * weights, 1) / jnp.maximum(jnp.sum(weights, 1), 1.0)
    carry = (pooled, pooled) if self.cell == "lstm" else pooled  # what the bridges read
    return memory, tuple(carry for _ in range(self.num_layers))

  def ctc_logits(self, encoded) -> Array:
    """float32 `[B, F', vocab]`: the CTC head over the encoder frames (blank = id 0)."""
    return self.ctc_head(encoded["memory"]).astype(jnp.float32)

  def init_decode_state(self, encoded, input_lengths: Array):
    """The decoder attends over the encoder frames: their lengths, not the input's."""
    del input_lengths
    return super().init_decode_state(encoded, encoded["frames"])

  def __call__(self, inputs: Array, input_lengths: Array, targets_in: Array, *,
               deterministic: bool = True,
               heads: Sequence[str] = ("attention", "ctc")) -> dict[str, Array]:
    encoded = self.encode(inputs, input_lengths, deterministic=deterministic)
    out = {"frames": encoded["frames"]}
    if "ctc" in heads:
      out["ctc"] = self.ctc_logits(encoded)
    if "attention" in heads:
      out["attention"] = self.teacher_forced(self.init_decode_state(encoded, input_lengths),
                                             targets_in, deterministic)
    return out
