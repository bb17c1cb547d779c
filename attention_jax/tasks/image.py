"""Image to text (OCR, captioning): a CNN grid attended by an RNN or Transformer decoder.

Batches are the `data.pipeline` dicts with `inputs` float32 `[B, W, H]` (an image's
columns, pixels / 255, zero-padded on the right) and `input_lengths` the real widths.

The loss is the teacher-forced cross-entropy per target token plus, for the RNN decoder
(Xu et al. 2015, "Show, Attend and Tell"):

  doubly_stochastic  lambda * sum_i (1 - sum_t alpha_ti)^2 per image, i over the real grid
                     positions, t over the real target steps (it asks every location to be
                     looked at about once), summed over the batch and divided by its target
                     tokens like the cross-entropy: Xu et al. add lambda times the term to
                     each caption's summed NLL, and this keeps that ratio.
  hard attention     the REINFORCE surrogate of `tasks.seq2seq.reinforce_loss` (reward:
                     the sequence's log-likelihood; baseline: the mean reward of the
                     batch's other images, an unbiased stand-in for Xu et al.'s moving
                     average that needs no state across steps), minus `entropy_bonus`
                     times the mean entropy of alpha_t per token (their lambda_e), and
                     the model's `expected_context_prob` minibatches (their 0.5).

Evaluation adds `doubly_stochastic` (the term before lambda) and `attention_entropy`
(nats per token), and for the visual sentinel (Lu et al. 2017) its mean weight beta on
digit tokens and on the other words (EOS in neither): `sentinel_beta_digits` and
`sentinel_beta_words`.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from attention_jax.attention import masks
from attention_jax.data import pipeline as data_pipeline
from attention_jax.data.vocab import EOS_ID
from attention_jax.evaluate import metrics as metrics_lib
from attention_jax.models.image import ImageRNN
from attention_jax.tasks import base
from attention_jax.tasks.seq2seq import Seq2SeqTask, _tokens, entropy
from attention_jax.viz import images as image_viz

Array = jax.Array


def doubly_stochastic(weights: Array, steps: Array, grid: Array) -> Array:
  """float32 `[B]`: sum_i (1 - sum_t alpha_ti)^2 over real positions `grid [B, S]` (bool)
  of the weights `[B, T, S]` of real steps `steps [B, T]` (float 0/1)."""
  attended = jnp.einsum("bts,bt->bs", weights.astype(jnp.float32), steps)
  return jnp.sum(jnp.square(1.0 - attended) * grid, axis=-1)


class ImageTask(Seq2SeqTask):
  """`ImageRNN` / `ImageTransformer` on an image data set (digit_strings, digit_scenes)."""

  name = "image2seq"

  def __init__(self, model, dataset, *, label_smoothing: float = 0.0,
               doubly_stochastic: float = 0.0, entropy_bonus: float = 0.0,
               sort_window: int = 0, reinforce_credit: str = "sequence"):
    super().__init__(model, dataset, label_smoothing=label_smoothing,
                     reinforce_credit=reinforce_credit, entropy_bonus=entropy_bonus)
    self.sort_window = sort_window  # train batches per width-sorted window (0: none)
    self.rnn = isinstance(model, ImageRNN) and model.attention != "none"
    self.sentinel = getattr(model, "sentinel", False)
    self.doubly_stochastic = float(doubly_stochastic)
    if self.doubly_stochastic and not self.rnn:
      raise ValueError("task.doubly_stochastic regularises an attention RNN's weights; "
                       "model.name='image_rnn' with model.attention other than 'none' has them")
    vocab = dataset.target_vocab if dataset is not None else None
    self._digits = np.array([i > EOS_ID and vocab.decode([i]).isdigit()
                             for i in range(vocab.size if vocab else 0)], bool)

  def check_data(self) -> None:
    """Images whose height is the model's."""
    height = getattr(self.dataset, "feature_dim", None)
    if self.dataset.spec.input_kind != "image" or height != self.model.image_height:
      what = (f"images {height} pixels high" if self.dataset.spec.input_kind == "image"
              else f"{self.dataset.spec.input_kind} inputs")
      raise ValueError(f"task.name='image2seq' needs images of model.image_height="
                       f"{self.model.image_height} pixels; data.name={self.dataset.name!r} has "
                       f"{what}")

  def example_batch(self, batch_size: int, length: int = 8) -> dict[str, np.ndarray]:
    batch = super().example_batch(batch_size, length)
    width = 4 * length
    batch["inputs"] = np.zeros((batch_size, width, self.model.image_height), np.float32)
    batch["input_lengths"] = np.full((batch_size,), width, np.int32)
    return batch

  def batches(self, split, *, batch_size, seed=0, train=False, indices=None):
    return data_pipeline.make_pipeline(self.dataset, split, batch_size=batch_size, seed=seed,
                                       train=train, indices=indices, add_eos_to_inputs=False,
                                       sort_window=self.sort_window if train else 0)

  def _mutable(self, train: bool) -> tuple[str, ...]:
    # The weights (and a sentinel's beta) in evaluations, and when training weighs them.
    out = ("reinforce",) if self.hard and train else ()
    weights = self.rnn and (not train or self.doubly_stochastic or self.entropy_bonus)
    return out + (("intermediates",) if weights else ())

  def loss(self, params, batch, rng, *, train):
    loss, sums, mask, sown = self._token_loss(params, batch, rng, train)
    tokens = jnp.maximum(sums["tokens"], 1.0)
    inter = sown.get("intermediates", {})
    if "attention_weights" in inter:
      extra = self._regularisers(inter["attention_weights"][0], batch, mask)
      sums.update(extra)
      loss = loss + self.doubly_stochastic * extra["doubly_stochastic_sum"] / tokens
      loss = loss - self.entropy_bonus * extra["entropy_sum"] / tokens
    if "sentinel_beta" in inter:
      sums.update(self._betas(inter["sentinel_beta"][0], batch, mask))
    if not train:
      return loss, sums
    metrics = base.means(sums)
    if "rows" in sums:
      metrics["doubly_stochastic"] = sums["doubly_stochastic_sum"] / jnp.maximum(sums["rows"], 1)
      metrics["attention_entropy"] = sums["entropy_sum"] / tokens
    return loss, metrics

  def _regularisers(self, weights: Array, batch: dict, mask: Array) -> dict[str, Array]:
    grid = masks.valid_from_lengths(self.model.grid_lengths(batch["input_lengths"]),
                                    weights.shape[-1])
    per_image = doubly_stochastic(weights, mask, grid)
    return {"doubly_stochastic_sum": jnp.sum(per_image * batch["weights"]),
            "rows": jnp.sum(batch["weights"]),
            "entropy_sum": jnp.sum(entropy(weights) * mask)}

  def _betas(self, betas: Array, batch: dict, mask: Array) -> dict[str, Array]:
    digit = jnp.asarray(self._digits)[batch["targets"]].astype(jnp.float32) * mask
    word = (batch["targets"] != EOS_ID).astype(jnp.float32) * mask - digit
    return {"beta_digit_sum": jnp.sum(betas * digit), "digit_tokens": jnp.sum(digit),
            "beta_word_sum": jnp.sum(betas * word), "word_tokens": jnp.sum(word)}

  def finish(self, sums: dict[str, float]) -> dict[str, float]:
    out = super().finish(sums)
    if "rows" in sums:
      out["doubly_stochastic"] = sums["doubly_stochastic_sum"] / max(sums["rows"], 1.0)
      out["attention_entropy"] = sums["entropy_sum"] / max(sums["tokens"], 1.0)
    if "digit_tokens" in sums:  # nan where a split has no such token: no mean to give
      out["sentinel_beta_digits"] = sums["beta_digit_sum"] / sums["digit_tokens"] if sums[
          "digit_tokens"] else float("nan")
      out["sentinel_beta_words"] = sums["beta_word_sum"] / sums["word_tokens"] if sums[
          "word_tokens"] else float("nan")
    return out

  def metric_names(self, scorers: str) -> list[str]:
    names = ["loss", "nll", "accuracy"]
    if self.rnn:
      names += ["doubly_stochastic", "attention_entropy"]
    if self.sentinel:
      names += ["sentinel_beta_digits", "sentinel_beta_words"]
    return names + metrics_lib.scored_metrics(scorers)

  def show(self, example: dict, prediction: str) -> str:
    return f"[{example['inputs']}] -> {prediction!r} (reference {example['references'][0]!r})"

  def heatmap_figures(self, params, batch: dict, n: int, step: int) -> dict:
    """Per row: the image with each output token's teacher-forced attention over it (the
    RNN's alignment; the Transformer's last-layer cross-attention, mean over heads)."""
    rows = {k: np.asarray(v)[:n] for k, v in batch.items()}
    rows = {k: v[rows["weights"] > 0] for k, v in rows.items()}
    _, inter = self.intermediates(params, rows)
    weights = _grid_weights(inter.get("intermediates", {}), self.rnn)
    if weights is None:
      return {}
    betas = inter["intermediates"].get("sentinel_beta")
    figures = {}
    for i in range(len(rows["weights"])):
      width = int(rows["input_lengths"][i])
      grid_w, grid_h = self.model.grid_shape(width)
      maps = weights[i, :, :grid_w * grid_h].reshape(-1, grid_w, grid_h)
      tokens = _tokens(self.dataset.target_vocab, rows["targets"][i])
      figures[f"example_{i}_attention"] = image_viz.make_image_figure(
          rows["inputs"][i, :width].T, maps, tokens, scale=self.model.grid_scale,
          betas=None if betas is None else np.asarray(betas[0])[i],
          title=f"example {i}, step {step}")
    return figures


def _grid_weights(intermediates, rnn: bool) -> np.ndarray | None:
  """`[B, T, grid]` attention over the grid, or None for a model without any."""
  if rnn:
    found = intermediates.get("attention_weights")
    return None if found is None else np.asarray(found[0])
  layers = intermediates.get("decoder", {})
  order = sorted(layers, key=lambda k: int(k.rpartition("_")[2]))  # layer_10 after layer_9
  cross = [layers[k]["cross_attention"]["attention_weights"][0] for k in order
           if "cross_attention" in layers[k]]
  if not cross:
    return None
  return np.asarray(cross[-1]).mean(axis=1)  # [B, heads, T, grid] -> heads' mean
