"""The PyTorch peer of `RNNSeq2Seq`: an attention encoder-decoder written the plain way.

As in the common PyTorch tutorials: an `nn.GRU` / `nn.LSTM` encoder over the
whole source, then a Python loop over target steps with an `nn.GRUCell` /
`nn.LSTMCell` whose input is [embedding; context] (Bahdanau) or
[embedding; previous attentional vector] (Luong input feeding), attention
computed at each step. One deliberate kindness to the peer: the additive
score's key projection W_k h_j is computed once per batch, before the loop,
not at every step as the tutorials do.

It computes the same function as `RNNSeq2Seq` with attention 'bahdanau'
(score 'additive') or 'luong' (score 'dot', 'general' or 'location', input
feeding), one layer, a uni- or bidirectional encoder (packed sequences, so
each direction starts and ends at the sequence's real length), and dropout
at our places (embeddings, before the readout); `load_flax_params` copies our
parameters in, and tests/bench checks that loss and gradients agree with
dropout off.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class TorchRNNSeq2Seq(nn.Module):
  """Encoder-decoder with Bahdanau (additive) or Luong (input feeding) attention."""

  def __init__(self, vocab_size: int, embed_dim: int, hidden_dim: int, cell: str = "lstm",
               attention: str = "bahdanau", *, score: str | None = None,
               src_vocab_size: int | None = None, tgt_embed_dim: int | None = None,
               bidirectional: bool = False, dropout: float = 0.0, max_len: int = 64):
    super().__init__()
    score = score or ("additive" if attention == "bahdanau" else "dot")
    if (cell not in ("gru", "lstm") or attention not in ("bahdanau", "luong")
        or score not in ("additive", "dot", "general", "location")):
      raise ValueError(f"unknown cell {cell!r}, attention {attention!r} or score {score!r}")
    self.cell, self.attention, self.score, self.hidden_dim = cell, attention, score, hidden_dim
    rnn, step = (nn.GRU, nn.GRUCell) if cell == "gru" else (nn.LSTM, nn.LSTMCell)
    tgt_embed_dim = tgt_embed_dim or embed_dim
    directions = 2 if bidirectional else 1
    self.src_embed = nn.Embedding(src_vocab_size or vocab_size, embed_dim)
    self.tgt_embed = nn.Embedding(vocab_size, tgt_embed_dim)
    self.encoder = rnn(embed_dim, hidden_dim, batch_first=True, bidirectional=bidirectional)
    self.decoder = step(tgt_embed_dim + hidden_dim, hidden_dim)
    self.bridge_h = nn.Linear(directions * hidden_dim, hidden_dim)
    if cell == "lstm":
      self.bridge_c = nn.Linear(directions * hidden_dim, hidden_dim)
    self.memory_proj = (nn.Linear(2 * hidden_dim, hidden_dim, bias=False) if bidirectional
                        else nn.Identity())
    if score == "additive":
      self.w_q = nn.Linear(hidden_dim, hidden_dim, bias=False)
      self.w_k = nn.Linear(hidden_dim, hidden_dim, bias=False)
      self.v = nn.Linear(hidden_dim, 1, bias=False)
    elif score != "dot":  # general: q^T W k; location: W q over the first S positions
      self.w = nn.Linear(hidden_dim, hidden_dim if score == "general" else max_len, bias=False)
    self.combine = nn.Linear(2 * hidden_dim, hidden_dim, bias=False)
    self.readout = nn.Linear(hidden_dim, vocab_size)
    self.dropout = nn.Dropout(dropout)

  def _attend(self, query, memory, keys, pad):
    """query [B, H], memory [B, S, H], pad [B, S] True at padding -> context [B, H]."""
    if self.score == "additive":
      scores = self.v(torch.tanh(self.w_q(query)[:, None] + keys))[..., 0]  # [B, S]
    elif self.score == "location":
      scores = self.w(query)[:, :memory.shape[1]]
    else:
      query = query if self.score == "dot" else query @ self.w.weight  # q^T W
      scores = torch.bmm(memory, query[:, :, None])[..., 0]  # [B, S]
    weights = torch.softmax(scores.masked_fill(pad, float("-inf")), dim=-1)
    return torch.bmm(weights[:, None], memory)[:, 0]

  def _encode(self, inputs, lengths):
    """memory [B, S, H] (projected when bidirectional) and the decoder's first state."""
    embedded = self.dropout(self.src_embed(inputs))
    if bool((lengths == inputs.shape[1]).all()):  # full rows: the plain call, no packing
      memory, final = self.encoder(embedded)
    else:
      packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True,
                                    enforce_sorted=False)
      memory, final = self.encoder(packed)
      memory, _ = pad_packed_sequence(memory, batch_first=True, total_length=inputs.shape[1])
    both = lambda x: torch.cat(list(x), dim=-1)  # [directions, B, H] -> [B, directions * H]
    if self.cell == "lstm":
      state = (torch.tanh(self.bridge_h(both(final[0]))), self.bridge_c(both(final[1])))
    else:
      state = torch.tanh(self.bridge_h(both(final)))
    return self.memory_proj(memory), state

  def forward(self, inputs: torch.Tensor, targets_in: torch.Tensor,
              input_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """inputs [B, S], targets_in [B, T] (BOS first) -> logits [B, T, vocab]."""
    if input_lengths is None:
      input_lengths = torch.full((inputs.shape[0],), inputs.shape[1])
    memory, state = self._encode(inputs, input_lengths)
    pad = torch.arange(inputs.shape[1])[None, :] >= input_lengths[:, None]  # [B, S]
    h = state[0] if self.cell == "lstm" else state
    keys = self.w_k(memory) if self.score == "additive" else None
    embedded = self.dropout(self.tgt_embed(targets_in))  # [B, T, E]
    feed = memory.new_zeros(inputs.shape[0], self.hidden_dim)
    outputs = []
    for t in range(targets_in.shape[1]):
      if self.attention == "bahdanau":
        context = self._attend(h, memory, keys, pad)  # the query is s_{t-1}
        state = self.decoder(torch.cat([embedded[:, t], context], dim=-1), state)
        h = state[0] if self.cell == "lstm" else state
        features = torch.tanh(self.combine(torch.cat([h, context], dim=-1)))
      else:
        state = self.decoder(torch.cat([embedded[:, t], feed], dim=-1), state)
        h = state[0] if self.cell == "lstm" else state
        context = self._attend(h, memory, keys, pad)  # the query is s_t
        features = feed = torch.tanh(self.combine(torch.cat([context, h], dim=-1)))
      outputs.append(features)
    return self.readout(self.dropout(torch.stack(outputs, dim=1)))


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

  gates = 3 if model.cell == "gru" else 4
  for ours, suffix in (("layer_0", "l0"), ("layer_0_backward", "l0_reverse")):
    if ours not in params["encoder"]:
      continue
    enc = params["encoder"][ours]
    getattr(model.encoder, f"weight_ih_{suffix}").copy_(_t(enc["input"]["kernel"]).T)
    getattr(model.encoder, f"bias_ih_{suffix}").copy_(_t(enc["input"]["bias"]))
    getattr(model.encoder, f"weight_hh_{suffix}").copy_(_t(enc["cell"]["kernel"]).T)
    getattr(model.encoder, f"bias_hh_{suffix}").copy_(recurrent_bias(enc["cell"], gates))

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
  if "memory_proj" in params:
    linear(model.memory_proj, params["memory_proj"])
  align = params.get("align", {})  # the dot score has no parameters
  if model.score == "additive":
    model.w_q.weight.copy_(_t(align["w_q"]).T)
    model.w_k.weight.copy_(_t(align["w_k"]).T)
    model.v.weight.copy_(_t(align["v"])[None, :])
  elif model.score == "general":
    model.w.weight.copy_(_t(align["w"]))  # used as q @ W
  elif model.score == "location":
    model.w.weight.copy_(_t(align["w"]).T)
  linear(model.combine, params["combine"])
  linear(model.readout, params["readout"])
  return model


def loss_fn(model: TorchRNNSeq2Seq, batch: dict, label_smoothing: float = 0.0) -> torch.Tensor:
  """Mean (smoothed) cross-entropy over the real target tokens, as our task's loss."""
  logits = model(batch["inputs"], batch["decoder_inputs"], batch.get("input_lengths"))
  targets = batch["targets"]
  if "target_lengths" in batch:  # padding positions are left out of the mean
    pad = torch.arange(targets.shape[1])[None, :] >= batch["target_lengths"][:, None]
    targets = targets.masked_fill(pad, -100)
  return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                         ignore_index=-100, label_smoothing=label_smoothing)
