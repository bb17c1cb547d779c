"""The Transformer (Vaswani et al. 2017): encoder-decoder and decoder-only LM.

Both follow the decoding interface shared with the RNN models:

    encode(inputs, input_lengths)               -> encoded (pytree)
    init_decode_state(encoded, input_lengths)   -> state (every leaf leads with batch)
    decode_step(state, tokens [batch])          -> (logits [batch, vocab], state)

and feeding the teacher-forced targets one token at a time through
`decode_step` gives the logits of the full forward pass. Attention weights
(self and cross, per layer and head) are sown into `intermediates`.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.attention import masks
from attention_jax.layers.common import dense
from attention_jax.layers.transformer import AddPositions, TransformerStack

Array = jax.Array


class _Embed(nn.Module):
  """Token embedding scaled by sqrt(d_model), positions added; `attend` gives tied logits."""
  vocab_size: int
  d_model: int
  positions: str
  max_len: int
  dropout_rate: float
  dtype: Any
  param_dtype: Any

  def setup(self):
    # std d_model^-0.5, so the scaled embedding has unit scale (as in tensor2tensor): at std 1
    # it was sqrt(d_model) = 11 at d 128, drowning the sinusoids (scale 1) and, tied, giving
    # initial logits of std 11; the Transformer G2P then learnt 4x slower than the RNN.
    self.table = nn.Embed(
        self.vocab_size, self.d_model, dtype=self.dtype, param_dtype=self.param_dtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(self.d_model ** -0.5), ("vocab", "embed")))
    self.add_positions = AddPositions(self.positions, self.max_len, self.param_dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def __call__(self, tokens: Array, positions: Array | None = None,
               deterministic: bool = True) -> Array:
    x = self.table(tokens) * jnp.sqrt(jnp.asarray(self.d_model, self.dtype))
    x = self.add_positions(x, positions)  # [batch, length, d_model]
    return self.dropout(x, deterministic=deterministic)

  def attend(self, x: Array) -> Array:
    return self.table.attend(x)


class _TransformerBase(nn.Module):
  """Fields and pieces shared by both models."""
  vocab_size: int  # target (and LM) vocabulary
  d_model: int = 128  # model size
  num_heads: int = 4
  head_dim: int | None = None  # key/value size per head; None: d_model // num_heads
  num_kv_heads: int | None = None  # fewer than num_heads: grouped-query attention
  d_ff: int = 512  # feed-forward hidden size
  num_layers: int = 2  # decoder layers (and encoder layers unless set)
  dropout_rate: float = 0.1  # embeddings, residuals, feed-forward
  attention_dropout_rate: float = 0.0  # on attention weights
  positions: str = "sinusoidal"  # 'sinusoidal' or 'learned'
  max_len: int = 256  # longest sequence (positions and the decode cache)
  pre_ln: bool = True  # False: post-LN as in the original paper
  weighted: bool = False  # Weighted Transformer (Ahmed et al. 2017) self-attention
  tie_output: bool = True  # output projection = target embedding transposed
  scan_layers: bool = False  # nn.scan over layers (faster compiles for deep stacks)
  remat: bool = False  # recompute activations in the backward pass
  implementation: str = "reference"  # attention backend, see attention/core.py
  dtype: Any = jnp.float32  # compute dtype
  param_dtype: Any = jnp.float32

  @property
  def max_decode_len(self) -> int:
    """The longest sequence the positional table and the KV cache hold."""
    return self.max_len

  def _check(self):
    if self.head_dim is None and self.d_model % self.num_heads:
      raise ValueError(f"model.num_heads ({self.num_heads}) must divide model.d_model "
                       f"({self.d_model}) unless model.head_dim is set")

  def _embed(self, vocab_size: int, name: str) -> _Embed:
    return _Embed(vocab_size, self.d_model, self.positions, self.max_len, self.dropout_rate,
                  self.dtype, self.param_dtype, name=name)

  def _stack(self, causal: bool, num_layers: int, name: str) -> TransformerStack:
    block = dict(num_heads=self.num_heads,
                 head_dim=self.head_dim or self.d_model // self.num_heads,
                 num_kv_heads=self.num_kv_heads, d_ff=self.d_ff, causal=causal,
                 pre_ln=self.pre_ln, dropout_rate=self.dropout_rate,
                 attention_dropout_rate=self.attention_dropout_rate, weighted=self.weighted,
                 implementation=self.implementation)
    return TransformerStack(num_layers, block, self.scan_layers, self.remat, self.dtype,
                            self.param_dtype, name=name)

  def _output_layer(self) -> nn.Dense | None:
    """The untied output projection (None when tied to the target embedding)."""
    if self.tie_output:
      return None
    return dense(self.vocab_size, ("embed", "vocab"), dtype=self.dtype,
                 param_dtype=self.param_dtype)

  def _project(self, x: Array, embed: _Embed) -> Array:
    out = embed.attend(x) if self.tie_output else self.output(x)
    return out.astype(jnp.float32)  # [batch, length, vocab]


class EncoderDecoderTransformer(_TransformerBase):
  """Encoder self-attention, causal decoder self-attention, cross-attention."""
  src_vocab_size: int | None = None  # None: same as vocab_size
  encoder_layers: int | None = None  # None: num_layers
  share_embeddings: bool = False  # one table for source and target (same vocabulary)

  def setup(self):
    self._check()
    source_vocab = self.src_vocab_size or self.vocab_size
    if self.share_embeddings and source_vocab != self.vocab_size:
      raise ValueError(f"model.share_embeddings needs one vocabulary, got src_vocab_size "
                       f"{source_vocab} and vocab_size {self.vocab_size}")
    self.target_embed = self._embed(self.vocab_size, "target_embed")
    self.source_embed = (self.target_embed if self.share_embeddings
                         else self._embed(source_vocab, "source_embed"))
    self.encoder = self._stack(False, self.encoder_layers or self.num_layers, "encoder")
    self.decoder = self._stack(True, self.num_layers, "decoder")
    self.output = self._output_layer()

  def encode(self, inputs: Array, input_lengths: Array, *, deterministic: bool = True) -> Array:
    """`inputs` int `[batch, src_len]` -> encoder states `[batch, src_len, d_model]`."""
    src_mask = masks.padding_mask(masks.valid_from_lengths(input_lengths, inputs.shape[1]))
    x = self.source_embed(inputs, deterministic=deterministic)
    return self.encoder(x, self_mask=src_mask, deterministic=deterministic)[0]

  def _decode(self, targets_in, encoded, input_lengths, cache, positions, deterministic):
    cross_mask = masks.padding_mask(masks.valid_from_lengths(input_lengths, encoded.shape[1]))
    y = self.target_embed(targets_in, positions, deterministic=deterministic)
    y, cache = self.decoder(y, cache, encoded, cross_mask=cross_mask,
                            deterministic=deterministic)
    return self._project(y, self.target_embed), cache

  def __call__(self, inputs: Array, input_lengths: Array, targets_in: Array, *,
               deterministic: bool = True) -> Array:
    """Teacher forcing: `targets_in` int `[batch, tgt_len]` (BOS-shifted) -> logits."""
    encoded = self.encode(inputs, input_lengths, deterministic=deterministic)
    return self._decode(targets_in, encoded, input_lengths, None, None, deterministic)[0]

  def init_decode_state(self, encoded: Array, input_lengths: Array) -> dict:
    batch = encoded.shape[0]
    return {"cache": self.decoder.init_cache(batch, self.max_len), "encoded": encoded,
            "input_lengths": jnp.asarray(input_lengths, jnp.int32),
            "position": jnp.zeros((batch,), jnp.int32)}

  def decode_step(self, state: dict, tokens: Array, *,
                  deterministic: bool = True) -> tuple[Array, dict]:
    logits, cache = self._decode(tokens[:, None], state["encoded"], state["input_lengths"],
                                 state["cache"], state["position"][:, None], deterministic)
    return logits[:, 0], dict(state, cache=cache, position=state["position"] + 1)


class DecoderOnlyLM(_TransformerBase):
  """A causal language model: logits for the next token at every position."""

  def setup(self):
    self._check()
    self.embed = self._embed(self.vocab_size, "embed")
    self.decoder = self._stack(True, self.num_layers, "decoder")
    self.output = self._output_layer()

  def _forward(self, tokens, cache, positions, deterministic):
    x = self.embed(tokens, positions, deterministic=deterministic)
    x, cache = self.decoder(x, cache, deterministic=deterministic)
    return self._project(x, self.embed), cache

  def __call__(self, tokens: Array, *, deterministic: bool = True) -> Array:
    """`tokens` int `[batch, length]` -> next-token logits `[batch, length, vocab]`."""
    return self._forward(tokens, None, None, deterministic)[0]

  def init_decode_state(self, batch_size: int) -> dict:
    return {"cache": self.decoder.init_cache(batch_size, self.max_len),
            "position": jnp.zeros((batch_size,), jnp.int32)}

  def decode_step(self, state: dict, tokens: Array, *,
                  deterministic: bool = True) -> tuple[Array, dict]:
    logits, cache = self._forward(tokens[:, None], state["cache"], state["position"][:, None],
                                  deterministic)
    return logits[:, 0], dict(state, cache=cache, position=state["position"] + 1)
