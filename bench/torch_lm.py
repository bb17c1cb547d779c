"""The PyTorch peer of `DecoderOnlyLM`: `nn.TransformerEncoderLayer` blocks with a causal mask.

Pre-LN blocks (`norm_first=True`), ReLU feed-forward, no dropout, layer norm
epsilon 1e-6 as Flax's; token embedding times sqrt(d_model) plus the
sinusoidal table; a final layer norm; the output projection tied to the
embedding. `load_flax_params` copies our parameters in (the fused
in-projection is our query, key and value kernels side by side), and
tests/bench checks that the loss agrees.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from attention_jax.layers.transformer import sinusoidal_table


class TorchLM(nn.Module):
  """A decoder-only LM from stock PyTorch blocks."""

  def __init__(self, vocab_size: int, d_model: int, num_heads: int, d_ff: int, num_layers: int,
               max_len: int):
    super().__init__()
    self.d_model = d_model
    self.embed = nn.Embedding(vocab_size, d_model)
    self.register_buffer("positions", torch.from_numpy(sinusoidal_table(max_len, d_model)))
    self.layers = nn.ModuleList(
        nn.TransformerEncoderLayer(d_model, num_heads, d_ff, dropout=0.0, activation="relu",
                                   layer_norm_eps=1e-6, batch_first=True, norm_first=True)
        for _ in range(num_layers))
    self.final_norm = nn.LayerNorm(d_model, eps=1e-6)

  def forward(self, tokens: torch.Tensor) -> torch.Tensor:
    """tokens [B, T] -> next-token logits [B, T, vocab]."""
    t = tokens.shape[1]
    x = self.embed(tokens) * math.sqrt(self.d_model) + self.positions[:t]
    mask = nn.Transformer.generate_square_subsequent_mask(t)
    for layer in self.layers:
      x = layer(x, src_mask=mask, is_causal=True)
    return self.final_norm(x) @ self.embed.weight.T


def _t(x) -> torch.Tensor:
  return torch.from_numpy(np.array(x, dtype=np.float32))


@torch.no_grad()
def load_flax_params(model: TorchLM, params) -> TorchLM:
  """Copies `DecoderOnlyLM` parameters (unboxed, layers not scanned) into the peer."""
  d = model.d_model
  model.embed.weight.copy_(_t(params["embed"]["table"]["embedding"]))
  decoder = params["decoder"]

  def norm(layer, p):
    layer.weight.copy_(_t(p["scale"]))
    layer.bias.copy_(_t(p["bias"]))

  for i, layer in enumerate(model.layers):
    p = decoder[f"layer_{i}"]
    attn = p["self_attention"]
    # Our kernels are [d, heads, head_dim]; torch's in_proj is [3d, d] = (q; k; v) rows.
    kernels = [_t(attn[n]["kernel"]).reshape(d, -1) for n in ("query", "key", "value")]
    layer.self_attn.in_proj_weight.copy_(torch.cat(kernels, dim=1).T)
    layer.self_attn.in_proj_bias.copy_(
        torch.cat([_t(attn[n]["bias"]).reshape(-1) for n in ("query", "key", "value")]))
    layer.self_attn.out_proj.weight.copy_(_t(attn["out"]["kernel"]).reshape(-1, d).T)
    layer.self_attn.out_proj.bias.copy_(_t(attn["out"]["bias"]))
    norm(layer.norm1, p["self_attention_norm"])
    norm(layer.norm2, p["ffn_norm"])
    layer.linear1.weight.copy_(_t(p["ffn"]["wi"]["kernel"]).T)
    layer.linear1.bias.copy_(_t(p["ffn"]["wi"]["bias"]))
    layer.linear2.weight.copy_(_t(p["ffn"]["wo"]["kernel"]).T)
    layer.linear2.bias.copy_(_t(p["ffn"]["wo"]["bias"]))
  norm(model.final_norm, decoder["final_norm"])
  return model


def loss_fn(model: TorchLM, tokens: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
  logits = model(tokens)
  return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
