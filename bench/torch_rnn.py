"""The PyTorch peer of `RNNSeq2Seq`: an attention encoder-decoder written the plain way.

As in the common PyTorch tutorials: an `nn.GRU` / `nn.LSTM` encoder over the
whole source, then a Python loop over target steps with an `nn.GRUCell` /
`nn.LSTMCell` whose input is [embedding; context] (Bahdanau) or
[embedding; previous attentional vector] (Luong input feeding), attention
computed at each step. One deliberate kindness to the peer: the additive
score's key projection W_k h_j is computed once per batch, before the loop,
not at every step as the tutorials do.

It computes the same function as `RNNSeq2Seq(attention='bahdanau',
score='additive')` and `RNNSeq2Seq(attention='luong', score='dot')` (one
layer, unidirectional, full-length sources, no dropout);
`load_flax_params` copies our parameters in, and tests/bench checks that the
loss agrees.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class TorchRNNSeq2Seq(nn.Module):
  """Encoder-decoder with Bahdanau (additive) or Luong (dot, input feeding) attention."""

  def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, cell: str = "lstm",
               attention: str = "bahdanau"):
    super().__init__()
    if cell not in ("gru", "lstm") or attention not in ("bahdanau", "luong"):
      raise ValueError(f"unknown cell {cell!r} or attention {attention!r}")
    self.cell, self.attention, self.hidden_dim = cell, attention, hidden_dim
    rnn, step = (nn.GRU, nn.GRUCell) if cell == "gru" else (nn.LSTM, nn.LSTMCell)
    self.src_embed = nn.Embedding(vocab_size, embed_dim)
    self.tgt_embed = nn.Embedding(vocab_size, embed_dim)
    self.encoder = rnn(embed_dim, hidden_dim, batch_first=True)
    self.decoder = step(embed_dim + hidden_dim, hidden_dim)
    self.bridge_h = nn.Linear(hidden_dim, hidden_dim)
    if cell == "lstm":
      self.bridge_c = nn.Linear(hidden_dim, hidden_dim)
    if attention == "bahdanau":
      self.w_q = nn.Linear(hidden_dim, hidden_dim, bias=False)
      self.w_k = nn.Linear(hidden_dim, hidden_dim, bias=False)
      self.v = nn.Linear(hidden_dim, 1, bias=False)
    self.combine = nn.Linear(2 * hidden_dim, hidden_dim, bias=False)
    self.readout = nn.Linear(hidden_dim, vocab_size)

  def _attend(self, query, memory, keys):
    """query [B, H], memory [B, S, H] -> context [B, H]."""
    if self.attention == "bahdanau":
      scores = self.v(torch.tanh(self.w_q(query)[:, None] + keys))[..., 0]  # [B, S]
    else:
      scores = torch.bmm(memory, query[:, :, None])[..., 0]  # [B, S]
    weights = torch.softmax(scores, dim=-1)
    return torch.bmm(weights[:, None], memory)[:, 0]

  def forward(self, inputs: torch.Tensor, targets_in: torch.Tensor) -> torch.Tensor:
    """inputs [B, S], targets_in [B, T] (BOS first) -> logits [B, T, vocab]."""
    memory, final = self.encoder(self.src_embed(inputs))  # memory [B, S, H]
    if self.cell == "lstm":
      h_n, c_n = final
      state = (torch.tanh(self.bridge_h(h_n[0])), self.bridge_c(c_n[0]))
      h = state[0]
    else:
      h = state = torch.tanh(self.bridge_h(final[0]))
    keys = self.w_k(memory) if self.attention == "bahdanau" else None
    embedded = self.tgt_embed(targets_in)  # [B, T, E]
    feed = memory.new_zeros(inputs.shape[0], self.hidden_dim)
    outputs = []
    for t in range(targets_in.shape[1]):
      if self.attention == "bahdanau":
        context = self._attend(h, memory, keys)  # the query is s_{t-1}
        state = self.decoder(torch.cat([embedded[:, t], context], dim=-1), state)
        h = state[0] if self.cell == "lstm" else state
        features = torch.tanh(self.combine(torch.cat([h, context], dim=-1)))
      else:
        state = self.decoder(torch.cat([embedded[:, t], feed], dim=-1), state)
        h = state[0] if self.cell == "lstm" else state
        context = self._attend(h, memory, None)  # the query is s_t
        features = feed = torch.tanh(self.combine(torch.cat([context, h], dim=-1)))
      outputs.append(features)
    return self.readout(torch.stack(outputs, dim=1))


def _t(x) -> torch.Tensor:
  return torch.from_numpy(np.array(x, dtype=np.float32))


@torch.no_grad()
def load_flax_params(model: TorchRNNSeq2Seq, params) -> TorchRNNSeq2Seq:
  """Copies `RNNSeq2Seq` parameters (unboxed) into the peer.

  Our cells keep the input projection (with its bias) apart from the
  recurrent kernel; torch's have weight_ih, weight_hh, bias_ih, bias_hh in
  the same gate order (GRU r, z, n; LSTM i, f, g, o). Our GRU has one
  recurrent bias, b_hn: torch's b_hh is zero but for that third.
  """
  h = model.hidden_dim
  model.src_embed.weight.copy_(_t(params["src_embed"]["embedding"]))
  model.tgt_embed.weight.copy_(_t(params["tgt_embed"]["embedding"]))

  def recurrent_bias(cell_params, gates):
    bias = torch.zeros(gates * h)
    if "bias_hn" in cell_params:
      bias[2 * h:] = _t(cell_params["bias_hn"])
    return bias

  enc = params["encoder"]["layer_0"]
  gates = 3 if model.cell == "gru" else 4
  model.encoder.weight_ih_l0.copy_(_t(enc["input"]["kernel"]).T)
  model.encoder.bias_ih_l0.copy_(_t(enc["input"]["bias"]))
  model.encoder.weight_hh_l0.copy_(_t(enc["cell"]["kernel"]).T)
  model.encoder.bias_hh_l0.copy_(recurrent_bias(enc["cell"], gates))

  dec = params["decoder"]
  w_ih = torch.cat([_t(dec["input"]["kernel"]), _t(dec["extra_input"]["kernel"])], dim=0)
  model.decoder.weight_ih.copy_(w_ih.T)
  model.decoder.bias_ih.copy_(_t(dec["input"]["bias"]))
  model.decoder.weight_hh.copy_(_t(dec["cell_0"]["kernel"]).T)
  model.decoder.bias_hh.copy_(recurrent_bias(dec["cell_0"], gates))

  def linear(layer, p):
    layer.weight.copy_(_t(p["kernel"]).T)
    if layer.bias is not None:
      layer.bias.copy_(_t(p["bias"]))

  linear(model.bridge_h, params["bridge_h_0"])
  if model.cell == "lstm":
    linear(model.bridge_c, params["bridge_c_0"])
  if model.attention == "bahdanau":
    align = params["align"]
    model.w_q.weight.copy_(_t(align["w_q"]).T)
    model.w_k.weight.copy_(_t(align["w_k"]).T)
    model.v.weight.copy_(_t(align["v"])[None, :])
  linear(model.combine, params["combine"])
  linear(model.readout, params["readout"])
  return model


def loss_fn(model: TorchRNNSeq2Seq, batch: dict) -> torch.Tensor:
  """Mean cross-entropy over the target tokens (every row is full length here)."""
  logits = model(batch["inputs"], batch["decoder_inputs"])
  return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["targets"].reshape(-1))
