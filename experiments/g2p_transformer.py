r"""Grapheme-to-phoneme on CMUdict with a Transformer encoder-decoder (Vaswani et al. 2017).

    python -m attention_jax.main --config=experiments/g2p_transformer.py --workdir=runs/g2p_tf
    python -m attention_jax.main --config=experiments/g2p_transformer.py:heads=8,pre_ln=False \
        --workdir=runs/g2p_tf_h8_post
    python -m attention_jax.main --config=experiments/g2p_transformer.py:smoke=True --workdir=/tmp/smoke

Arguments (after the colon): heads, head_dim (0: d_model / heads), dropout,
label_smoothing, positions, pre_ln, weighted, stress, standard (the published g014b2b split,
`cmudict_g2p/standard`, no stress), steps, test, beam (k > 0: beam-decode dev and test at the
best greedy-dev step, as g2p_attention's `beam`), smoke.

Sweeps (`python -m launch.sweep --config=experiments/g2p_transformer.py --sweep=NAME`):
`sweep`, the Table 3 rows; `converged`, the default model without stress, trained until dev
WER stops improving; `standard`, that model on the published split, also beam-decoded;
`standard_levers`, the `standard` run with one lever of issue 18 changed.
"""
from attention_jax import experiment

DEFAULTS = dict(heads=4, head_dim=0, dropout=0.1, label_smoothing=0.1, positions="sinusoidal",
                pre_ln=True, weighted=False, stress=True, standard=False, steps=3000, test=False,
                beam=0, smoke=False)


def get_config(arg=None):
  args = experiment.parse_arg(arg, DEFAULTS)
  c = experiment.base_config()
  # standard: the published g014b2b split, which has no stress digits.
  c.data.name = "cmudict_g2p/" + ("standard" if args["standard"] else
                                  "stress" if args["stress"] else "no_stress")
  c.model.update(dict(
      name="transformer", d_model=128, num_heads=args["heads"], d_ff=512, num_layers=3,
      dropout_rate=args["dropout"], positions=args["positions"], pre_ln=args["pre_ln"],
      weighted=args["weighted"], max_len=64, tie_output=False,
      implementation="reference"))  # attention backend: see attention/core.py
  if args["head_dim"]:
    c.model.head_dim = args["head_dim"]
  c.task.label_smoothing = args["label_smoothing"]
  c.optim.update(learning_rate=1e-3, warmup_steps=400)
  c.train.steps = args["steps"]
  c.evals.dev.metrics = "sequence_accuracy,g2p"
  if args["test"]:
    c.evals.test = experiment.test_evaluator(c.evals.dev)
  if args["beam"]:
    experiment.add_beam_evaluators(c, args["beam"])
  if args["smoke"]:
    experiment.apply_smoke(c)
  return c


def sweep(add):
  """Vaswani et al. 2017 Table 3 rows that matter at this size, and the Weighted Transformer."""
  for heads in (1, 2, 4, 8):  # fixed model size: d_k = d_model / heads
    add(heads=heads)
  for head_dim in (8, 16):  # smaller keys at 4 heads
    add(head_dim=head_dim)
  add(dropout=0.0)
  add(label_smoothing=0.0)
  add(positions="learned")
  add(pre_ln=False)
  add(weighted=True)


def converged(add):
  """The default Transformer without stress, trained until dev WER stops improving
  (`experiment.CONVERGED`); the best step is scored on test."""
  add(stress=False, steps=40000, test=True, **experiment.CONVERGED)


def standard(add):
  """The `converged` Transformer on the published split (`cmudict_g2p/standard`), its best
  dev step also beam-decoded (k=4), as g2p_attention's `standard` sweep."""
  add(standard=True, steps=40000, test=True, beam=4, **experiment.CONVERGED)


def standard_levers(add):
  """The `standard` run with its learning-rate schedule changed, same seed: it was still
  improving at the 40,000-step cap with a train accuracy under the RNN's, and rsqrt decay
  had brought the rate down to a tenth of its peak (1e-4). Cosine decay from the same peak
  holds the rate at half of it at 20,000 steps and anneals it to zero at the cap; no early
  stopping, so the anneal is not cut short (the best dev step is still the one scored)."""
  add(standard=True, steps=40000, test=True, beam=4, **{
      **experiment.CONVERGED, "optim.schedule": "cosine", "train.early_stop_patience": 0})
