"""Speech recognition: log-mel frames to characters, attention and CTC trained together.

The loss (Kim, Hori & Watanabe 2017, "Joint CTC-attention based end-to-end speech
recognition using multi-task learning") is

    ctc_weight * L_ctc + (1 - ctc_weight) * L_attention

both per target token of the batch (the CTC loss of each utterance, `optax.ctc_loss`,
summed and divided by the batch's target tokens like the attention's cross-entropy), so
ctc_weight = 0 is attention alone and 1 is CTC alone (then the decoder is not run).
Decoding scores a hypothesis by w * log p_ctc + (1 - w) * log p_att (Watanabe et al.
2017, "Hybrid CTC/attention architecture for end-to-end speech recognition"), w =
`ctc_decode_weight` (default: ctc_weight): w = 0 is the attention decoder's greedy or
beam search, w = 1 CTC's best path (greedy) or prefix beam search, between the joint
beam search (a beam of one for 'greedy').

Training optionally masks the features SpecAugment-style (Park et al. 2019): bands of
mel bins and spans of frames of each utterance set to 0, the per-utterance mean.

Batches are the `data.pipeline` dicts with `inputs` float32 `[B, F, mel]` (frames, zero
padded) and `input_lengths` the frame counts.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from attention_jax import decode
from attention_jax.data import pipeline as data_pipeline
from attention_jax.data.vocab import BOS_ID, EOS_ID, PAD_ID
from attention_jax.decode import ctc
from attention_jax.evaluate import metrics as metrics_lib
from attention_jax.models.speech import SUBSAMPLING
from attention_jax.tasks import base
from attention_jax.tasks.seq2seq import Seq2SeqTask, _tokens, output_log_probs
from attention_jax.viz import speech as speech_viz

Array = jax.Array


class SpecAugment(NamedTuple):
  """Masks per utterance and their widest extent (a width is drawn in [0, max])."""
  freq_masks: int = 0
  freq_width: int = 0
  time_masks: int = 0
  time_width: int = 0


def _band_mask(rng: Array, count: int, width: int, limits: Array, size: int) -> Array:
  """bool `[B, size]`: `count` bands per row of width in [0, width], inside [0, limits)."""
  batch = limits.shape[0]
  keys = jax.random.split(rng, 2)
  widths = jnp.minimum(jax.random.randint(keys[0], (batch, count), 0, width + 1),
                       limits[:, None])
  room = jnp.maximum(limits[:, None] - widths, 0) + 1  # start in [0, limit - width]
  starts = jnp.floor(jax.random.uniform(keys[1], (batch, count)) * room).astype(jnp.int32)
  pos = jnp.arange(size)[None, None, :]
  inside = (pos >= starts[..., None]) & (pos < (starts + widths)[..., None])
  return jnp.any(inside, axis=1)


def spec_augment(rng: Array, features: Array, lengths: Array, config: SpecAugment) -> Array:
  """`features [B, F, mel]` with frequency bands and time spans (within each utterance's
  length) set to zero."""
  batch, frames, mel = features.shape
  freq_rng, time_rng = jax.random.split(rng)
  keep = jnp.ones((batch, frames, mel), bool)
  if config.freq_masks and config.freq_width:
    bands = _band_mask(freq_rng, config.freq_masks, config.freq_width,
                       jnp.full((batch,), mel), mel)
    keep &= ~bands[:, None, :]
  if config.time_masks and config.time_width:
    spans = _band_mask(time_rng, config.time_masks, config.time_width, lengths, frames)
    keep &= ~spans[:, :, None]
  return jnp.where(keep, features, jnp.zeros((), features.dtype))


def ctc_losses(logits: Array, frames: Array, batch: dict) -> Array:
  """float32 `[B]`: -log p_ctc(targets without EOS | frames); 0 on padding rows."""
  f, t = logits.shape[1], batch["targets"].shape[1]
  frames = jnp.maximum(frames, 1)  # a padding row: an empty label over one frame, finite
  logit_pad = (jnp.arange(f)[None] >= frames[:, None]).astype(jnp.float32)
  label_pad = (jnp.arange(t)[None] >= batch["target_lengths"][:, None] - 1).astype(jnp.float32)
  losses = optax.ctc_loss(logits, logit_pad, batch["targets"], label_pad, blank_id=PAD_ID)
  return jnp.where(batch["weights"] > 0, losses, 0.0)


def monotonic_steps(weights: Array, frames: Array, batch: dict,
                    sharpness: float = 4.0) -> dict[str, Array]:
  """How monotonic teacher-forced alignments `weights [B, T, F']` over `frames [B]` encoder
  frames are: of the decoder steps after the first (EOS included, real rows), how many
  attend sharply (peak weight >= `sharpness` times the uniform 1 / frames) at or after the
  previous step's peak frame. Their ratio, `monotonic`, is 1 for a peaked alignment that
  never moves backwards and 0 for a flat (untrained) one."""
  peaks = jnp.argmax(weights, axis=-1)  # [B, T]
  peak = jnp.max(weights, axis=-1)[:, 1:] * frames[:, None]  # in units of the uniform weight
  forward = ((peak >= sharpness) & (peaks[:, 1:] >= peaks[:, :-1])).astype(jnp.float32)
  mask = base.token_mask(batch)[:, 1:]
  return {"forward_steps": jnp.sum(forward * mask), "decoder_steps": jnp.sum(mask)}


@functools.partial(jax.jit, static_argnames=("model", "method", "beam_size", "alpha",
                                             "max_len", "weight"))
def _decode(params, inputs, input_lengths, *, model, method, beam_size, alpha, max_len,
            weight):
  """Token ids `[B, max_len]` (or every beam `[B, k, max_len]` with method 'beams')."""
  variables = {"params": params}
  encoded = model.apply(variables, inputs, input_lengths, method=model.encode)
  batch = inputs.shape[0]
  if weight > 0.0:
    log_probs = jax.nn.log_softmax(model.apply(variables, encoded, method=model.ctc_logits))
    if weight == 1.0 and method == "greedy":
      return ctc.greedy(log_probs, encoded["frames"], blank=PAD_ID, eos_id=EOS_ID,
                        max_len=max_len)
  state = model.apply(variables, encoded, input_lengths, method=model.init_decode_state)
  step = lambda s, t: model.apply(variables, s, t, method=model.decode_step)
  if weight == 0.0:
    if method == "greedy":
      return decode.greedy(step, state, batch, bos_id=BOS_ID, eos_id=EOS_ID, max_len=max_len)
    beams = decode.beam_search(step, state, batch, beam_size=beam_size, bos_id=BOS_ID,
                               eos_id=EOS_ID, max_len=max_len, alpha=alpha)[0]
  else:
    beams = ctc.joint_beam_search(
        None if weight == 1.0 else step, state, log_probs, encoded["frames"], batch,
        ctc_weight=weight, beam_size=1 if method == "greedy" else beam_size, bos_id=BOS_ID,
        eos_id=EOS_ID, max_len=max_len, alpha=alpha, blank=PAD_ID)[0]
  return beams if method == "beams" else beams[:, 0]


class SpeechTask(Seq2SeqTask):
  """`SpeechSeq2Seq` on log-mel frames: the joint loss, joint decoding, CER and WER."""

  name = "speech"

  def __init__(self, model, dataset, *, label_smoothing: float = 0.0, ctc_weight: float = 0.3,
               ctc_decode_weight: float | None = None,
               augment: SpecAugment = SpecAugment(), sort_window: int = 0):
    super().__init__(model, dataset, label_smoothing=label_smoothing)
    if self.hard:
      raise ValueError("model.attention='hard' is not supported by task.name='speech' (its "
                       "REINFORCE term is the seq2seq task's); known here: none, bahdanau, "
                       "luong, local")
    self.ctc_weight = float(ctc_weight)
    self.decode_weight = float(self.ctc_weight if ctc_decode_weight is None
                               else ctc_decode_weight)
    if self.decode_weight > 0 and self.ctc_weight == 0:
      raise ValueError(f"task.ctc_decode_weight={self.decode_weight} needs a trained CTC head: "
                       "task.ctc_weight is 0")
    if self.decode_weight < 1 and self.ctc_weight == 1:
      raise ValueError(f"task.ctc_decode_weight={self.decode_weight} needs a trained attention "
                       "decoder: task.ctc_weight is 1 (set ctc_decode_weight=1)")
    self.augment = augment
    self.sort_window = sort_window  # train batches per length-sorted window (0: none)

  def check_data(self) -> None:
    """Feature inputs of the model's size; the transformer encoder's positional table must
    hold every split's longest input."""
    dim = getattr(self.dataset, "feature_dim", None)
    if dim != self.model.feature_dim:
      what = f"{dim}-dimensional frames" if dim else "text, not feature frames"
      raise ValueError(f"task.name='speech' needs frames of model.feature_dim="
                       f"{self.model.feature_dim}; data.name={self.dataset.name!r} has {what}")
    if self.model.encoder_type != "transformer":
      return  # the recurrent encoder has no length limit
    for split in self.dataset.splits:
      frames = self.dataset.max_lengths(split)[0]
      if frames > self.model.max_frames:
        raise ValueError(f"{self.dataset.name}/{split} has utterances of up to {frames} "
                         f"frames, more than model.max_frames={self.model.max_frames} (the "
                         "transformer encoder's positional table); raise model.max_frames")

  def example_batch(self, batch_size: int, length: int = 8) -> dict[str, np.ndarray]:
    batch = super().example_batch(batch_size, length)
    frames = 4 * length
    batch["inputs"] = np.zeros((batch_size, frames, self.model.feature_dim), np.float32)
    batch["input_lengths"] = np.full((batch_size,), frames, np.int32)
    return batch

  def apply(self, params, batch, *, rngs=None, train=False, mutable=(), heads=None):
    heads = heads or ("attention", "ctc")
    return self.model.apply({"params": params}, batch["inputs"], batch["input_lengths"],
                            batch["decoder_inputs"], deterministic=not train, rngs=rngs,
                            mutable=list(mutable) or False, heads=heads)

  def _train_heads(self) -> tuple[str, ...]:
    """Training runs only the heads its loss weighs (evaluation reports both)."""
    return tuple(h for h, w in (("attention", 1.0 - self.ctc_weight), ("ctc", self.ctc_weight))
                 if w > 0)

  def loss(self, params, batch, rng, *, train):
    rngs = None
    if rng is not None:
      rngs = {"dropout": jax.random.fold_in(rng, 0), "sample": jax.random.fold_in(rng, 1)}
      if train and any(self.augment):
        batch = dict(batch, inputs=spec_augment(jax.random.fold_in(rng, 2), batch["inputs"],
                                                batch["input_lengths"], self.augment))
    sums = {}
    if train:
      out = self.apply(params, batch, rngs=rngs, train=train, heads=self._train_heads())
    else:  # the alignment too, for its monotonicity
      out, inter = self.apply(params, batch, mutable=("intermediates",))
      sums.update(monotonic_steps(inter["intermediates"]["attention_weights"][0],
                                  out["frames"], batch))
    sums["tokens"], loss = jnp.sum(base.token_mask(batch)), 0.0
    tokens = jnp.maximum(sums["tokens"], 1.0)
    if "attention" in out:
      att_loss, att_sums, _ = base.token_losses(out["attention"], batch, self.label_smoothing)
      sums.update(att_sums)
      loss = (1.0 - self.ctc_weight) * att_loss
    if "ctc" in out:
      sums["ctc_sum"] = jnp.sum(ctc_losses(out["ctc"], out["frames"], batch))
      loss = loss + self.ctc_weight * sums["ctc_sum"] / tokens
    if not train:
      sums["loss_sum"] = loss * tokens
      return loss, sums
    metrics = base.means(sums) if "attention" in out else {"tokens": tokens}
    if "ctc" in out:
      metrics["ctc_loss"] = sums["ctc_sum"] / tokens
    return loss, metrics

  def finish(self, sums: dict[str, float]) -> dict[str, float]:
    out = super().finish(sums)
    out["ctc_loss"] = sums["ctc_sum"] / max(sums["tokens"], 1.0)
    out["monotonic"] = sums["forward_steps"] / max(sums["decoder_steps"], 1.0)
    return out

  def metric_names(self, scorers: str) -> list[str]:
    return ["loss", "nll", "accuracy", "ctc_loss", "monotonic",
            *metrics_lib.scored_metrics(scorers)]

  def batches(self, split, *, batch_size, seed=0, train=False, indices=None):
    return data_pipeline.make_pipeline(self.dataset, split, batch_size=batch_size, seed=seed,
                                       train=train, indices=indices, add_eos_to_inputs=False,
                                       sort_window=self.sort_window if train else 0)

  def predict(self, params, batch, *, method: str = "greedy", max_len: int, beam_size: int = 4,
              alpha: float = 0.0, all_beams: bool = False, rng=None, **_) -> Array:
    """Decoded ids `[B, max_len]` (every beam `[B, k, max_len]` with beam search and
    `all_beams`), scored with the task's CTC decode weight."""
    del rng
    method = "beams" if method == "beam" and all_beams else method
    return _decode(params, batch["inputs"], batch["input_lengths"], model=self.model,
                   method=method, beam_size=beam_size, alpha=alpha, max_len=max_len,
                   weight=self.decode_weight)

  def output_scores(self, params, batch: dict, finished) -> np.ndarray:
    """The decoding's own score `[B]`: (1 - w) log p_attention + w log p_ctc with w the CTC
    decode weight (CTC scores the tokens without EOS, finished or not)."""
    w, out = self.decode_weight, self.apply(params, batch)
    attention = output_log_probs(out["attention"], batch, finished) if w < 1 else 0.0
    ctc = -np.asarray(ctc_losses(out["ctc"], out["frames"], batch)) if w > 0 else 0.0
    return (1.0 - w) * attention + w * ctc

  def show(self, example: dict, prediction: str) -> str:
    return f"[{example['inputs']}] -> {prediction!r} (reference {example['references'][0]!r})"

  def heatmap_figures(self, params, batch: dict, n: int, step: int) -> dict:
    """Per row: the log-mel spectrogram, the teacher-forced alignment of every output over
    the encoder frames, and the CTC posteriors under it."""
    rows = {k: np.asarray(v)[:n] for k, v in batch.items()}
    rows = {k: v[rows["weights"] > 0] for k, v in rows.items()}
    out, inter = self.intermediates(params, rows)
    weights = np.asarray(inter["intermediates"]["attention_weights"][0])  # [n, T, F']
    posteriors = np.asarray(jax.nn.softmax(out["ctc"], axis=-1))
    vocab = self.dataset.target_vocab
    labels = ["<blank>"] + [_tokens(vocab, [i])[0] for i in range(1, vocab.size)]
    figures = {}
    for i in range(len(rows["weights"])):
      frames, enc = int(rows["input_lengths"][i]), int(out["frames"][i])
      targets = _tokens(vocab, rows["targets"][i])
      figures[f"example_{i}_alignment"] = speech_viz.make_speech_figure(
          rows["inputs"][i, :frames], weights[i, :len(targets), :enc], targets,
          posteriors[i, :enc], subsampling=SUBSAMPLING, ctc_labels=labels,
          title=f"example {i}, step {step}")
    return figures
