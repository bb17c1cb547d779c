"""Evaluation: teacher-forced loss and accuracy, decoding and its scores, attention heatmaps."""
from __future__ import annotations

import functools
import os
import jax
from jax.experimental import multihost_utils
import numpy as np

from attention_jax import decode, evaluate as scoring
from attention_jax.evaluate import translation
from attention_jax.data import pipeline as data_pipeline
from attention_jax.data.vocab import BOS_ID, EOS_ID
from attention_jax.train import partition
from attention_jax.viz import heatmaps


@functools.partial(jax.jit, static_argnames=("model", "method", "beam_size", "alpha", "max_len"))
def _decode(params, batch: dict, *, model, method: str, beam_size: int, alpha: float,
            max_len: int) -> jax.Array:
  """Token ids `[batch, max_len]` decoded greedily or by beam search (best beam)."""
  variables = {"params": params}
  encoded = model.apply(variables, batch["inputs"], batch["input_lengths"], method=model.encode)
  state = model.apply(variables, encoded, batch["input_lengths"], method=model.init_decode_state)
  step = lambda s, t: model.apply(variables, s, t, method=model.decode_step)
  size = batch["inputs"].shape[0]
  if method == "beam":
    return decode.beam_search(step, state, size, beam_size=beam_size, bos_id=BOS_ID,
                              eos_id=EOS_ID, max_len=max_len, alpha=alpha)[0][:, 0]
  return decode.greedy(step, state, size, bos_id=BOS_ID, eos_id=EOS_ID, max_len=max_len)


def _tokens(vocab, ids) -> list[str]:
  """Per-position token strings of one sequence, up to and including EOS."""
  out = []
  for i in np.asarray(ids):
    out.append(vocab.decode([i]) if i not in (EOS_ID, BOS_ID) else ("</s>" if i == EOS_ID else "<s>"))
    if i == EOS_ID:
      break
  return out


def heatmaps_at(state, model, dataset, batch: dict, n: int, out_dir: str, writer,
                step: int) -> list[str]:
  """Teacher-forced attention of the first `n` rows of `batch`: one PNG per kind and
  example under `out_dir`, and the same images in TensorBoard."""
  rows = {k: np.asarray(v)[:n] for k, v in batch.items()}
  # A collective: params may span other processes' devices. Only process 0 draws.
  params = multihost_utils.process_allgather(state.params, tiled=True)
  if jax.process_index() != 0:
    return []
  _, inter = model.apply({"params": params}, rows["inputs"], rows["input_lengths"],
                         rows["decoder_inputs"], mutable=["intermediates"])
  if not inter:  # a model without attention (the RNN baseline) has nothing to draw
    return []
  sources = [_tokens(dataset.input_vocab, r) for r in rows["inputs"]]
  targets = [_tokens(dataset.target_vocab, r) for r in rows["targets"]]
  figures = heatmaps.example_figures(inter, sources, targets,
                                     decoder_input_tokens=[["<s>"] + t[:-1] for t in targets])
  paths = []
  for stem, fig in figures.items():
    paths.append(heatmaps.save_figure(fig, os.path.join(out_dir, f"{stem}.png")))
    writer.image(step, f"attention/{stem}", heatmaps.figure_to_rgba(fig))
  return paths


# Selection metrics where higher is better; every other metric is an error or a loss.
HIGHER_IS_BETTER = ("accuracy", "sequence_accuracy", "bleu")


def selection_metric(config, scores: dict[str, float]) -> str:
  """`train.select_by`, or the data set's headline metric: WER, BLEU, else the loss."""
  if config.train.select_by:
    return config.train.select_by
  return next((k for k in ("wer", "bleu") if k in scores), "loss")


def better(metric: str, a: float, b: float) -> bool:
  """Whether score `a` beats `b` on `metric`."""
  return a > b if metric in HIGHER_IS_BETTER else a < b


def run(state, model, dataset, config, mesh, eval_step, step: int, workdir: str,
        writer, progress, split: str | None = None, limit: int | None = None,
        examples: list | None = None, draw: bool = True) -> tuple[dict[str, float], str | None]:
  """(metrics on `split` at `step`, the heatmap directory `<workdir>/attention/step_<step>` or None).

  `split` defaults to `data.eval_split` and `limit` (decoded examples, 0: all) to
  `data.max_eval_examples`; `examples`, when a list, receives one dict per decoded
  example (source, prediction, references, correct); `draw=False` skips the heatmaps.
  """
  split, cfg = split or config.data.eval_split, config.train
  batches = data_pipeline.make_pipeline(dataset, split, batch_size=config.data.eval_batch_size,
                                        train=False)
  texts = dataset.texts(split)
  sums: dict[str, float] = {}
  predictions, references, sources = [], [], []
  limit = config.data.max_eval_examples if limit is None else limit
  limit = limit or len(texts)
  first = None
  for batch in batches:
    first = first or batch
    with partition.activate(mesh):
      sharded = partition.shard_batch(batch, mesh)
      out = eval_step(state, sharded)
      if len(predictions) < limit:
        ids = _decode(state.params, {k: sharded[k] for k in ("inputs", "input_lengths")},
                      model=model, method=cfg.decode, beam_size=cfg.beam_size,
                      alpha=cfg.beam_alpha, max_len=batch["targets"].shape[1])
    for key, value in out.items():
      sums[key] = sums.get(key, 0.0) + float(value)
    if len(predictions) < limit:
      # Every process gets the whole global batch's outputs, so all score the same examples.
      ids, index = multihost_utils.process_allgather((ids, sharded["index"]), tiled=True)
      for row, i in zip(ids[index >= 0], index[index >= 0]):
        predictions.append(dataset.target_vocab.decode(row))
        references.append(texts[i]["references"])
        sources.append(texts[i]["inputs"])
  tokens = max(sums["tokens"], 1.0)
  metrics = {"loss": sums["loss_sum"] / tokens, "nll": sums["nll_sum"] / tokens,
             "accuracy": sums["correct"] / tokens}
  predictions, references = predictions[:limit], references[:limit]
  metrics["sequence_accuracy"] = float(np.mean([p in refs for p, refs in
                                                zip(predictions, references)]))
  if dataset.name.startswith("cmudict_g2p"):
    metrics.update(scoring.g2p_scores(predictions, references))
  elif dataset.name.startswith(("freedict", "wmt")):
    metrics["bleu"] = translation.bleu(predictions, references)
  else:  # symbol tasks (algorithmic): edit distance over the vocabulary's tokens
    split = dataset.target_vocab.split
    metrics["token_error_rate"] = scoring.phoneme_error_rate(
        [split(p) for p in predictions], [[split(r) for r in refs] for refs in references])
  if examples is not None:
    examples.extend({"source": src, "prediction": p, "references": refs, "correct": p in refs}
                    for src, p, refs in zip(sources, predictions, references))
  for i in range(min(cfg.print_examples, len(predictions))):
    progress.write(f"  {sources[i]!r} -> {predictions[i]!r} (reference {references[i][0]!r})")
  out_dir = None
  if draw and cfg.heatmap_examples and first is not None:
    out_dir = os.path.join(workdir, "attention", f"step_{step}")
    if not heatmaps_at(state, model, dataset, first, cfg.heatmap_examples, out_dir, writer, step):
      out_dir = None
  return metrics, out_dir
