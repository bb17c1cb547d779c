"""The PyTorch peer of `EncoderDecoderTransformer`: stock `nn.TransformerEncoder/Decoder` blocks.

Written as a PyTorch user would: `nn.Embedding` times sqrt(d_model) plus the
tutorial's sinusoidal table, `nn.TransformerEncoder(Layer)` and
`nn.TransformerDecoder(Layer)` with `norm_first=True, batch_first=True` and a
final `nn.LayerNorm` on each stack, an untied `nn.Linear` output projection,
source key padding in encoder self-attention and cross-attention, a causal
mask in decoder self-attention, and token cross-entropy with label smoothing
over the real target tokens. At the sizes of `experiments/g2p_transformer.py`
(`G2P_SIZES`, `G2P_OPTIM`), parameterised so tests can run tiny ones.

Where the stock layers differ from ours, and how the peer matches us:

* Layer norm epsilon: Flax's 1e-6, not torch's 1e-5 (`layer_norm_eps=1e-6`
  and on both final norms).
* Attention-weight dropout: the stock layers drop attention weights at the
  layer's `dropout`; ours has `attention_dropout_rate=0` (residual, embedding
  and feed-forward dropout only), so the peer sets every
  `nn.MultiheadAttention.dropout` to 0. The other places match: embeddings +
  positions (source and target), each sublayer's output before the residual
  sum (dropout1/2/3), the feed-forward hidden activations.
* Target padding: ours masks none in the decoder (only causal; pads come
  after every real position, so no real query sees one), so the peer passes
  no `tgt_key_padding_mask`.
* Sources of length 0 (the pipeline's padding rows, weight 0): ours gives a
  fully masked row zero attention weights. torch 2.13 on CPU does too on the
  path the stock layers take (SDPA, need_weights=False), but its
  need_weights=True path gives NaN, and so may other backends and versions,
  which would poison the loss (NaN * weight 0 = NaN). The peer lets such a
  row attend its first position instead; the row's loss weight is 0, so the
  loss and every gradient are unchanged.
* Heads: `nn.MultiheadAttention` fixes head_dim = d_model / heads; our
  `head_dim` option (the experiment's `head_dim=` sweep) has no stock peer.
* Parameters: ours keep per-head kernels `[d, heads, head_dim]`; torch fuses
  the in-projection (q; k; v rows, heads major), also for cross-attention
  (kdim = vdim = d_model).
* No `padding_idx` on the embeddings: ours has none (it would also zero the
  pad row's gradient, hiding a mask bug).

Optimizer (`make_peer`): ours is optax AdamW after `clip_by_global_norm`,
weight decay 0 in the experiment (torch's AdamW defaults to 0.01: passed
explicitly), eps 1e-8 on both, linear warmup from 0 then rsqrt decay, as a
`LambdaLR`. torch's `clip_grad_norm_` divides by norm + 1e-6 where optax
divides by the norm: a relative difference of 1e-6 on clipped steps.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

# experiments/g2p_transformer.py (tests/bench checks these against its config). The vocabulary
# sizes come from the data: a-z and the apostrophe plus 4 specials; the 39 ARPAbet phonemes
# with stress digits (24 consonants + 15 vowels x 3) plus 4 specials.
G2P_SIZES = dict(src_vocab=31, vocab=73, d_model=128, heads=4, d_ff=512, layers=3, max_len=64,
                 dropout=0.1)
LABEL_SMOOTHING = 0.1
G2P_OPTIM = dict(name="adamw", learning_rate=1e-3, warmup_steps=400, schedule="rsqrt", b1=0.9,
                 b2=0.98, weight_decay=0.0, grad_clip_norm=1.0,
                 ema_decay=0.0)  # the peer keeps no moving average of its parameters
G2P_STEPS = 3000
LAYER_NORM_EPS = 1e-6  # Flax's nn.LayerNorm default


def flax_model_config(sizes: dict) -> dict:
  """`config.model` of our model at `sizes` (for `build_model`), as the experiment sets it."""
  return dict(name="transformer", vocab_size=sizes["vocab"], src_vocab_size=sizes["src_vocab"],
              d_model=sizes["d_model"], num_heads=sizes["heads"], d_ff=sizes["d_ff"],
              num_layers=sizes["layers"], dropout_rate=sizes["dropout"], positions="sinusoidal",
              pre_ln=True, max_len=sizes["max_len"], tie_output=False)


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
  """The PyTorch tutorial's table: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same)."""
  position = torch.arange(max_len, dtype=torch.float64)[:, None]
  div_term = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float64)
                       * (-math.log(10000.0) / d_model))
  pe = torch.zeros(max_len, d_model, dtype=torch.float64)
  pe[:, 0::2] = torch.sin(position * div_term)
  pe[:, 1::2] = torch.cos(position * div_term)[:, : d_model // 2]
  return pe.float()


class TorchTransformerSeq2Seq(nn.Module):
  """Pre-LN Transformer encoder-decoder from stock PyTorch layers."""

  def __init__(self, src_vocab: int, vocab: int, d_model: int, num_heads: int, d_ff: int,
               num_layers: int, max_len: int, dropout: float = 0.1,
               encoder_layers: int | None = None):
    super().__init__()
    self.d_model, self.max_len = d_model, max_len
    self.src_embed = nn.Embedding(src_vocab, d_model)
    self.tgt_embed = nn.Embedding(vocab, d_model)
    self.register_buffer("positions", sinusoidal_positions(max_len, d_model), persistent=False)
    self.src_dropout = nn.Dropout(dropout)
    self.tgt_dropout = nn.Dropout(dropout)
    layer = dict(d_model=d_model, nhead=num_heads, dim_feedforward=d_ff, dropout=dropout,
                 activation="relu", layer_norm_eps=LAYER_NORM_EPS, batch_first=True,
                 norm_first=True)
    self.encoder = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(**layer), encoder_layers or num_layers,
        norm=nn.LayerNorm(d_model, eps=LAYER_NORM_EPS), enable_nested_tensor=False)
    self.decoder = nn.TransformerDecoder(
        nn.TransformerDecoderLayer(**layer), num_layers,
        norm=nn.LayerNorm(d_model, eps=LAYER_NORM_EPS))
    self.output = nn.Linear(d_model, vocab)
    # Ours drops no attention weights (attention_dropout_rate 0); the stock layers would.
    for module in self.modules():
      if isinstance(module, nn.MultiheadAttention):
        module.dropout = 0.0

  def _embed(self, embed: nn.Embedding, dropout: nn.Dropout, tokens: torch.Tensor):
    length = tokens.shape[1]
    if length > self.max_len:
      raise ValueError(f"sequence length {length} exceeds the positions' max_len {self.max_len}")
    return dropout(embed(tokens) * math.sqrt(self.d_model) + self.positions[:length])

  def forward(self, inputs: torch.Tensor, input_lengths: torch.Tensor,
              decoder_inputs: torch.Tensor) -> torch.Tensor:
    """inputs [B, S], input_lengths [B], decoder_inputs [B, T] (BOS first) -> logits [B, T, V]."""
    s, t = inputs.shape[1], decoder_inputs.shape[1]
    # True = ignore. A length-0 row (a padding row) keeps its first position: see the docstring.
    lengths = input_lengths.to(inputs.device).clamp(min=1)
    src_pad = torch.arange(s, device=inputs.device)[None, :] >= lengths[:, None]
    memory = self.encoder(self._embed(self.src_embed, self.src_dropout, inputs),
                          src_key_padding_mask=src_pad)
    causal = nn.Transformer.generate_square_subsequent_mask(t, device=inputs.device)
    y = self.decoder(self._embed(self.tgt_embed, self.tgt_dropout, decoder_inputs), memory,
                     tgt_mask=causal, tgt_is_causal=True, memory_key_padding_mask=src_pad)
    return self.output(y)


def _t(x) -> torch.Tensor:
  return torch.from_numpy(np.array(x, dtype=np.float32))


@torch.no_grad()
def load_flax_params(model: TorchTransformerSeq2Seq, params) -> TorchTransformerSeq2Seq:
  """Copies `EncoderDecoderTransformer` parameters (unboxed, layers not scanned) into the peer."""
  d = model.d_model

  def linear(layer, p):
    layer.weight.copy_(_t(p["kernel"]).T)
    layer.bias.copy_(_t(p["bias"]))

  def norm(layer, p):
    layer.weight.copy_(_t(p["scale"]))
    layer.bias.copy_(_t(p["bias"]))

  def attention(mha, p):
    # Our kernels are [d, heads, head_dim]; torch's in_proj is [3d, d] = (q; k; v) rows.
    names = ("query", "key", "value")
    kernels = [_t(p[n]["kernel"]).reshape(d, -1) for n in names]
    mha.in_proj_weight.copy_(torch.cat(kernels, dim=1).T)
    mha.in_proj_bias.copy_(torch.cat([_t(p[n]["bias"]).reshape(-1) for n in names]))
    mha.out_proj.weight.copy_(_t(p["out"]["kernel"]).reshape(-1, d).T)
    mha.out_proj.bias.copy_(_t(p["out"]["bias"]))

  def feed_forward(layer, p):
    linear(layer.linear1, p["wi"])
    linear(layer.linear2, p["wo"])

  for side in ("source_embed", "target_embed"):
    if "add_positions" in params[side]:
      raise ValueError("the peer has sinusoidal positions; these parameters have learned ones")
  model.src_embed.weight.copy_(_t(params["source_embed"]["table"]["embedding"]))
  model.tgt_embed.weight.copy_(_t(params["target_embed"]["table"]["embedding"]))
  for stack in ("encoder", "decoder"):
    if "layers" in params[stack]:
      raise ValueError("scanned layers (scan_layers=True) are not supported: unstack them first")

  for i, layer in enumerate(model.encoder.layers):
    p = params["encoder"][f"layer_{i}"]
    attention(layer.self_attn, p["self_attention"])
    norm(layer.norm1, p["self_attention_norm"])
    feed_forward(layer, p["ffn"])
    norm(layer.norm2, p["ffn_norm"])
  norm(model.encoder.norm, params["encoder"]["final_norm"])

  for i, layer in enumerate(model.decoder.layers):
    p = params["decoder"][f"layer_{i}"]
    attention(layer.self_attn, p["self_attention"])
    norm(layer.norm1, p["self_attention_norm"])
    attention(layer.multihead_attn, p["cross_attention"])
    norm(layer.norm2, p["cross_attention_norm"])
    feed_forward(layer, p["ffn"])
    norm(layer.norm3, p["ffn_norm"])
  norm(model.decoder.norm, params["decoder"]["final_norm"])
  linear(model.output, params["output"])
  return model


def to_torch_batch(batch: dict) -> dict[str, torch.Tensor]:
  """A data-pipeline batch (NumPy) as tensors: ids and lengths int64, weights float32."""
  out = {k: torch.from_numpy(np.asarray(batch[k])).long()
         for k in ("inputs", "input_lengths", "decoder_inputs", "targets", "target_lengths")}
  if "weights" in batch:
    out["weights"] = torch.from_numpy(np.asarray(batch["weights"], np.float32))
  return out


def loss_fn(model: TorchTransformerSeq2Seq, batch: dict,
            label_smoothing: float = LABEL_SMOOTHING) -> torch.Tensor:
  """`Seq2SeqTask`'s training loss: the smoothed token cross-entropy summed over the real
  target tokens (position < target_lengths, of rows with weight 1) over their count (at
  least 1): a per-token mean over the batch, not a mean of per-sequence means.

  torch's label smoothing, (1 - eps) NLL + eps mean_c(-log p_c), is ours.
  """
  logits = model(batch["inputs"], batch["input_lengths"], batch["decoder_inputs"])
  targets = batch["targets"].long()
  per_token = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none",
                              label_smoothing=label_smoothing)  # [B, T]
  positions = torch.arange(targets.shape[1], device=targets.device)
  mask = (positions[None, :] < batch["target_lengths"][:, None]).float()
  if "weights" in batch:
    mask = mask * batch["weights"][:, None]
  return (per_token * mask).sum() / mask.sum().clamp(min=1.0)


def lr_lambda(optim: dict, total_steps: int):
  """`train.optim.make_schedule` as a LambdaLR factor of step (0 = the first update)."""
  warmup, kind = optim["warmup_steps"], optim["schedule"]
  if kind not in ("constant", "rsqrt", "cosine"):
    raise ValueError(f"optim.schedule={kind!r} is unknown; known: constant, rsqrt, cosine")

  def factor(step: int) -> float:
    if step < warmup:  # optax.linear_schedule(0, lr, warmup): 0 at the first update
      return step / warmup
    step -= warmup
    if kind == "rsqrt":
      start = max(warmup, 1)
      return (start / (step + start)) ** 0.5
    if kind == "cosine":
      decay = max(total_steps - warmup, 1)
      return 0.5 * (1.0 + math.cos(math.pi * min(step, decay) / decay))
    return 1.0

  return factor


def make_peer(sizes: dict, params, optim: dict = G2P_OPTIM, total_steps: int = G2P_STEPS):
  """(the peer with our parameters, its optimizer) as `train.optim.make_optimizer(optim)`.

  The learning-rate schedule rides on the optimizer as `optimizer.lr_scheduler` (a
  `LambdaLR`) and the clipping norm as `optimizer.grad_clip_norm`; `train_step` uses both.
  The model is in training mode (dropout on): call `.eval()` for none.
  """
  model = TorchTransformerSeq2Seq(sizes["src_vocab"], sizes["vocab"], sizes["d_model"],
                                  sizes["heads"], sizes["d_ff"], sizes["layers"],
                                  sizes["max_len"], sizes.get("dropout", 0.1))
  load_flax_params(model, params)
  betas, lr = (optim["b1"], optim["b2"]), optim["learning_rate"]
  if optim["name"] == "adamw":
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, eps=1e-8,
                            weight_decay=optim["weight_decay"])
  elif optim["name"] == "adam":
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=betas, eps=1e-8)
  else:
    raise ValueError(f"optim.name={optim['name']!r}: the peer has adamw and adam")
  opt.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(optim, total_steps))
  opt.grad_clip_norm = optim["grad_clip_norm"]
  return model.train(), opt


def train_step(model: TorchTransformerSeq2Seq, optimizer: torch.optim.Optimizer, batch: dict,
               label_smoothing: float = LABEL_SMOOTHING) -> torch.Tensor:
  """Forward, backward, global-norm clipping, one optimizer (and schedule) step; the loss."""
  loss = loss_fn(model, batch, label_smoothing)
  loss.backward()
  clip = getattr(optimizer, "grad_clip_norm", 1.0)
  if clip:
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
  optimizer.step()
  scheduler = getattr(optimizer, "lr_scheduler", None)
  if scheduler is not None:
    scheduler.step()
  optimizer.zero_grad(set_to_none=True)
  return loss.detach()
