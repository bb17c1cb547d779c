"""RNN encoder-decoder with every attention variant of the lineage, one config field each.

attention='none'      Sutskever / Cho: the decoder starts from the encoder's
                      last state and sees nothing else of the source.
attention='bahdanau'  query s_{t-1}; c_t = attend(s_{t-1}, H) is fed into the
                      cell input with y_{t-1}; output tanh(W_o [s_t; c_t]).
attention='luong'     query s_t; h~_t = tanh(W_c [c_t; s_t]) is the output;
                      `input_feeding` feeds h~_{t-1} into the next input.
attention='local'     as 'luong' with Luong's local-p alignment.
attention='hard'      as 'luong' with one sampled (argmax when deterministic)
                      position (Xu et al. 2015); `hard_estimator` trains its
                      scores by REINFORCE (the task's surrogate) or by the
                      straight-through Gumbel-softmax (Jang et al. 2017);
                      with `expected_context_prob` p a training minibatch
                      uses the expected context instead of the sample with
                      probability p (Xu et al.'s 0.5), its log-probs then 0.

Every kind takes any score function (`score`), a GRU or LSTM `cell`,
`num_layers` stacked layers in the encoder and the decoder and a
(bi)directional encoder. The initial decoder state of layer l is a learned
bridge of the encoder's final state of layer l: tanh(W h) (and W c for the
LSTM memory). When the encoder output size differs from `hidden_dim`
(bidirectional), the memory is projected to `hidden_dim` once per sequence.

score='location_aware' (Chorowski et al. 2015) reads the previous step's
alignment: the state then carries it as 'previous_alignment' float32 [B, S],
replaced by each step's weights (for 'hard', the distribution sampled from; for
'local', the Gaussian-scaled weights). Before the first step it is uniform over
each sequence's real positions (1 / S_b there, 0 at pads): what attention with
no information (equal scores) gives. The first step's convolution thus reads an
alignment like every later one (non-negative, summing to one, zero at pads)
rather than a special value, and no start position is presumed: a one-hot at
position 0 would build in a left-to-right prior that suits speech, not every task.

Interface shared with the Transformer and the decode module:
  __call__(inputs [B,S], input_lengths [B], targets_in [B,T], *, deterministic)
      -> logits float32 [B,T,vocab]       (teacher forcing)
  encode(inputs, input_lengths, *, deterministic) -> encoded (pytree)
  init_decode_state(encoded, input_lengths) -> state (every leaf leads with B)
  decode_step(state, tokens [B], *, deterministic) -> (logits [B,vocab], state)
`__call__` scans `_step` over time; `decode_step` calls the same `_step` once.

Sown (pass the collection in `mutable=[...]` to `apply` to get it back):
  'intermediates' / 'attention_weights'  float32 [B,T,S] from __call__, [B,S]
                       per decode_step: the heatmaps.
  'reinforce' / 'log_prob'  attention='hard' with hard_estimator='reinforce' only:
                       float32 [B,T] (or [B]) log-prob of each chosen
                       position; sum it over real
                       target steps and pass it to
                       `attention.hard.reinforce_surrogate` with a reward such
                       as -NLL of the sequence. A collection of its own, so a
                       train step can take it without asking every attention
                       layer for its weights.
Randomness: 'dropout' when dropout_rate > 0, and 'sample' for hard attention,
both only when deterministic=False.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from attention_jax.attention import hard, masks, scores
from attention_jax.layers import alignment, recurrent
from attention_jax.layers.common import dense

Array = jax.Array

ATTENTIONS = ("none", "bahdanau", "luong", "local", "hard")
_ALIGNMENT_KIND = {"bahdanau": "soft", "luong": "soft", "local": "local", "hard": "hard"}


def _check(owner: str, value: str, known) -> None:
  if value not in known:
    raise ValueError(f"{owner}={value!r} is unknown; known: {', '.join(known)}")


class RNNSeq2Seq(nn.Module):
  """Sequence-to-sequence RNN with a choice of attention."""
  vocab_size: int  # target vocabulary: the logits' size
  src_vocab_size: int | None = None  # source vocabulary; None: vocab_size
  attention: str = "luong"  # 'none', 'bahdanau', 'luong', 'local' or 'hard'
  score: str = "general"  # any name in attention.scores.SCORES (unused by 'none')
  cell: str = "lstm"  # 'gru' or 'lstm'
  num_layers: int = 1  # encoder layers = decoder layers
  bidirectional: bool = False  # bidirectional encoder
  src_embed_dim: int = 64  # source embedding size
  tgt_embed_dim: int = 64  # target embedding size
  hidden_dim: int = 128  # decoder size, and encoder size per direction
  attention_dim: int | None = None  # additive score / local-p predictor size; None: hidden_dim
  input_feeding: bool = True  # luong, local, hard: feed h~_{t-1} into the cell input
  window: int = 2  # local: half-width D of the window (sigma = D / 2)
  hard_estimator: str = "reinforce"  # hard: 'reinforce' (the task's surrogate) or 'gumbel'
  gumbel_temperature: float = 1.0  # hard with 'gumbel': tau of the straight-through relaxation
  expected_context_prob: float = 0.0  # hard: minibatches trained on the expected context
  max_len: int = 64  # location score: the longest source it can attend
  temperature: float = 1.0  # cosine / pearson score temperature
  conv_filters: int = 10  # location_aware: filters of the convolution over the last alignment
  conv_width: int = 15  # location_aware: their (odd) width; see Alignment for both defaults
  dropout_rate: float = 0.0  # embeddings, between layers, before the output layer
  dtype: Any = jnp.float32  # compute dtype (softmax and logits are float32)
  param_dtype: Any = jnp.float32  # parameter storage dtype

  def __post_init__(self):
    _check("RNNSeq2Seq.attention", self.attention, ATTENTIONS)
    _check("RNNSeq2Seq.score", self.score, tuple(scores.SCORES))
    _check("RNNSeq2Seq.cell", self.cell, recurrent.CELLS)
    _check("RNNSeq2Seq.hard_estimator", self.hard_estimator, hard.ESTIMATORS)
    super().__post_init__()

  # A recurrent decoder can run for any number of steps (max_len bounds the source).
  max_decode_len = None

  @property
  def _feeds(self) -> bool:
    """Whether h~_{t-1} enters the next cell input (Luong's input feeding)."""
    return self.input_feeding and self.attention in ("luong", "local", "hard")

  def setup(self):
    embed = lambda vocab, dim, name: nn.Embed(
        vocab, dim, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ("vocab", "embed")))
    self.src_embed = embed(self.src_vocab_size or self.vocab_size, self.src_embed_dim, "src_embed")
    self.tgt_embed = embed(self.vocab_size, self.tgt_embed_dim, "tgt_embed")
    self.encoder = recurrent.RNNEncoder(
        self.cell, self.hidden_dim, self.num_layers, self.bidirectional, self.dropout_rate,
        self.dtype, self.param_dtype)
    self.decoder = recurrent.StackedCells(
        self.cell, self.hidden_dim, self.num_layers, self.dropout_rate, self.dtype,
        self.param_dtype)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    self.bridge_h = [dense(self.hidden_dim, ("memory", "hidden"), name=f"bridge_h_{i}", **kw)
                     for i in range(self.num_layers)]
    if self.cell == "lstm":
      self.bridge_c = [dense(self.hidden_dim, ("memory", "hidden"), name=f"bridge_c_{i}", **kw)
                       for i in range(self.num_layers)]
    if self.attention != "none":
      if self.bidirectional:  # the scores compare decoder states with hidden_dim-sized keys
        self.memory_proj = dense(self.hidden_dim, ("memory", "hidden"), name="memory_proj",
                                 use_bias=False, **kw)
      self.align = alignment.Alignment(
          score=self.score, kind=_ALIGNMENT_KIND[self.attention],
          attention_dim=self.attention_dim, max_len=self.max_len, window=self.window,
          temperature=self.temperature, dtype=self.dtype, param_dtype=self.param_dtype,
          conv_filters=self.conv_filters, conv_width=self.conv_width,
          estimator=self.hard_estimator, gumbel_temperature=self.gumbel_temperature)
      self.combine = dense(self.hidden_dim, ("memory", "hidden"), name="combine", use_bias=False,
                           **kw)
    self.readout = dense(self.vocab_size, ("hidden", "vocab"), name="readout", **kw)
    self.dropout = nn.Dropout(self.dropout_rate)

  # ---- encoder side ----

  def encode(self, inputs: Array, input_lengths: Array, *, deterministic: bool = True):
    """Returns {'memory': [B, S, directions * hidden], 'final': per-layer final carries}."""
    x = self.src_embed(inputs)  # [batch, src_len, src_embed]
    x = self.dropout(x, deterministic=deterministic)
    memory, final = self.encoder(x, input_lengths, deterministic=deterministic)
    return {"memory": memory, "final": final}

  def init_decode_state(self, encoded, input_lengths: Array):
    """The decoder state before the first target token; every leaf is [B, ...]."""
    carries = []
    for i, final in enumerate(encoded["final"]):
      h0 = jnp.tanh(self.bridge_h[i](recurrent.carry_output(self.cell, final)))  # [batch, hidden]
      carries.append((self.bridge_c[i](final[0]), h0) if self.cell == "lstm" else h0)
    state = {"carry": tuple(carries)}
    if self.attention != "none":
      memory = encoded["memory"]
      if self.bidirectional:
        memory = self.memory_proj(memory)  # [batch, src_len, hidden]
      state["memory"] = memory
      state["mask"] = masks.valid_from_lengths(input_lengths, memory.shape[1])  # [batch, src_len]
      keys = self.align.project_keys(memory)  # once per sequence, not at every step
      if keys is not None:
        state["keys"] = keys  # [batch, src_len, attention_dim]
      if self._location_aware:  # uniform over the real positions: see the module docstring
        real = state["mask"].astype(jnp.float32)
        state["previous_alignment"] = real / jnp.maximum(jnp.sum(real, -1, keepdims=True), 1.0)
    if self._feeds:
      state["feed"] = jnp.zeros((memory.shape[0], self.hidden_dim), self.dtype)
    if self.attention == "hard":  # decoding samples; teacher_forced may draw it True
      state["expected"] = jnp.zeros((input_lengths.shape[0],), bool)
    return state

  def _expected_flag(self, batch: int, deterministic: bool) -> Array:
    """bool `[B]`, one draw for the minibatch: train it on the expected context (Xu et
    al.'s recipe for hard attention, with probability `expected_context_prob`)."""
    if deterministic or self.expected_context_prob <= 0:
      return jnp.zeros((batch,), bool)
    draw = jax.random.bernoulli(self.make_rng("sample"), self.expected_context_prob)
    return jnp.broadcast_to(draw, (batch,))

  def _hard_context(self, out: alignment.AlignmentOutput, state) -> tuple[Array, Array]:
    """Hard attention's (context, log_prob), or the expected context and log-prob 0 (no
    REINFORCE term) for rows whose state says 'expected'."""
    soft = jnp.einsum("bs,bsd->bd", out.weights.astype(out.context.dtype), state["memory"])
    expected = state["expected"]
    return (jnp.where(expected[:, None], soft, out.context),
            jnp.where(expected, 0.0, out.log_prob))

  @property
  def _location_aware(self) -> bool:
    """Whether the state carries the previous alignment."""
    return self.attention != "none" and self.score == "location_aware"

  # ---- the decoder step, shared by training and decoding ----

  def _embed_targets(self, tokens: Array, deterministic: bool) -> Array:
    """Tokens `[B]` or `[B, T]` -> layer 0's projected input `[..., gates * hidden]`."""
    x = self.tgt_embed(tokens)  # [..., tgt_embed]
    x = self.dropout(x, deterministic=deterministic)
    return self.decoder.project(x)

  def _attend(self, query: Array, state, deterministic: bool) -> alignment.AlignmentOutput:
    return self.align(query, state["memory"], state["memory"], state["mask"],
                      deterministic=deterministic, projected_keys=state.get("keys"),
                      previous=state.get("previous_alignment"))

  def _step(self, state, x_proj: Array, deterministic: bool):
    """One decoder step from the projected token input `x_proj [B, gates * hidden]`.

    Returns the new state and (features [B, hidden], weights [B, S] or None,
    log_prob [B] or None); the logits are `_logits(features)`.
    """
    carry = state["carry"]
    out = None
    if self.attention == "bahdanau":
      query = recurrent.carry_output(self.cell, carry[-1])  # s_{t-1}, [batch, hidden]
      out = self._attend(query, state, deterministic)
      carry, s = self.decoder(carry, x_proj, out.context, deterministic=deterministic)
      features = jnp.tanh(self.combine(jnp.concatenate([s, out.context], axis=-1)))
    else:
      extra = state["feed"] if self._feeds else None
      carry, s = self.decoder(carry, x_proj, extra, deterministic=deterministic)
      features = s
      if self.attention != "none":
        out = self._attend(s, state, deterministic)
        if self.attention == "hard":
          context, log_prob = self._hard_context(out, state)
          out = out._replace(context=context, log_prob=log_prob)
        features = jnp.tanh(self.combine(jnp.concatenate([out.context, s], axis=-1)))
    state = {**state, "carry": carry}
    if self._location_aware:
      state["previous_alignment"] = out.weights  # float32 [batch, src_len]
    if self._feeds:
      state["feed"] = features.astype(state["feed"].dtype)
    weights = None if out is None else out.weights
    log_prob = None if out is None else out.log_prob
    return state, (features, weights, log_prob)

  def _logits(self, features: Array, deterministic: bool) -> Array:
    features = self.dropout(features, deterministic=deterministic)
    return self.readout(features).astype(jnp.float32)  # [..., vocab]

  def _sow(self, weights: Array | None, log_prob: Array | None) -> None:
    if weights is not None:
      self.sow("intermediates", "attention_weights", weights)
    # init keeps no 'reinforce'; the straight-through estimator needs no surrogate
    if log_prob is not None and not self.is_initializing() and self.hard_estimator == "reinforce":
      self.sow("reinforce", "log_prob", log_prob)

  def decode_step(self, state, tokens: Array, *, deterministic: bool = True):
    """One token `[B]` -> logits float32 `[B, vocab]` and the next state."""
    state, (features, weights, log_prob) = self._step(
        state, self._embed_targets(tokens, deterministic), deterministic)
    self._sow(weights, log_prob)
    return self._logits(features, deterministic), state

  def __call__(self, inputs: Array, input_lengths: Array, targets_in: Array, *,
               deterministic: bool = True) -> Array:
    """Teacher-forced logits float32 `[B, T, vocab]`; targets_in starts with BOS."""
    encoded = self.encode(inputs, input_lengths, deterministic=deterministic)
    return self.teacher_forced(self.init_decode_state(encoded, input_lengths), targets_in,
                               deterministic)

  def teacher_forced(self, state, targets_in: Array, deterministic: bool) -> Array:
    """Logits float32 `[B, T, vocab]` of every step from the decode state `state`."""
    if self.attention == "hard":
      state = dict(state, expected=self._expected_flag(targets_in.shape[0], deterministic))
    x_proj = self._embed_targets(targets_in, deterministic)  # [batch, tgt_len, gates * hidden]
    body = lambda model, state, x_t: model._step(state, x_t, deterministic)
    _, (features, weights, log_prob) = recurrent.scan_time(body, self, state, x_proj)
    self._sow(weights, log_prob)  # [batch, tgt_len, src_len], [batch, tgt_len]
    return self._logits(features, deterministic)
