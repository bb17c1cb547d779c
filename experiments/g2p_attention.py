r"""Grapheme-to-phoneme on CMUdict with an attention RNN encoder-decoder (the default experiment).

    python -m attention_jax.main --config=experiments/g2p_attention.py --workdir=runs/g2p
    python -m attention_jax.main --config=experiments/g2p_attention.py:attention=bahdanau,score=additive \
        --workdir=runs/g2p_bahdanau --config.train.steps=5000
    python -m attention_jax.main --config=experiments/g2p_attention.py:smoke=True --workdir=/tmp/smoke
    python -m attention_jax.main --config=experiments/g2p_attention.py:standard=True,test=True \
        --workdir=runs/g2p_standard

Arguments (after the colon): attention, score, cell, stress, standard (the published
g014b2b split, `cmudict_g2p/standard`, which has no stress: `stress` is then moot), steps,
test (at the end, score the best dev step on the test split), estimator, credit and xu
(hard attention's training: REINFORCE with sequence or per-step credit, the straight-through
Gumbel-softmax, Xu et al.'s recipe; as in `experiments/algorithmic.py`), beam (k > 0: at the end,
also decode dev and, with test, test by beam search of width k at the best dev step, as
evaluators `dev_beam` and `test_beam`; the step is still picked by greedy dev WER), layers
(stacked LSTM layers in the encoder and the decoder), distilled (a dir that
`launch.distill_g2p` wrote: the standard split with a teacher's train pronunciations, read
as the manual dir, prepared in its `data/`; implies standard), smoke.

Sweeps (`python -m launch.sweep --config=experiments/g2p_attention.py --sweep=NAME`):
`sweep`, every attention kind and score; `small`, the 2-core ablation of `make sweep`;
`hard_estimators`, soft vs hard attention trained by each estimator;
`converged`, the best of `sweep` without stress, trained until dev WER stops improving;
`standard`, that wide model on the published split, also beam-decoded; `standard_levers`,
that run with one lever changed (label smoothing; the parameters' moving average);
`standard_distilled`, the moving-average run trained on an ensemble's outputs;
`standard_cosine`, the two-layer run in 10,000 steps with cosine decay.
Search (`python -m launch.sweep --config=experiments/g2p_attention.py --search=optuna
--trials=20 --root=runs/g2p_search`): `search_space`, Luong attention's learning rate,
dropout, width and score.
"""
import os

from attention_jax import experiment

DEFAULTS = dict(attention="luong", score="general", cell="lstm", stress=True, standard=False,
                steps=3000, test=False, beam=0, smoke=False, layers=1,
                estimator="reinforce", credit="sequence", xu=False, distilled="")
# The converged sweep's wide RNN.
WIDE = {"model.hidden_dim": 256, "model.src_embed_dim": 128, "model.tgt_embed_dim": 128,
        "model.dropout_rate": 0.2}

# Published numbers `launch.report` prints beside ours (percent). They are on other splits
# (the 2007 CMUdict split of Bisani & Ney, or another random split), 39 phonemes without
# stress: only orderings and rough levels compare.
REFERENCES = [
    dict(source="Yao & Zweig 2015", where="bidirectional LSTM", metric="wer_no_stress",
         value=23.55, note="CMUdict 2007 split"),
    dict(source="Yao & Zweig 2015", where="bidirectional LSTM", metric="per_no_stress",
         value=5.45, note="CMUdict 2007 split"),
    dict(source="Toshniwal & Livescu 2016", where="attention, ensemble", metric="wer_no_stress",
         value=20.24, note="CMUdict 2007 split"),
    dict(source="Toshniwal & Livescu 2016", where="attention, ensemble", metric="per_no_stress",
         value=4.69, note="CMUdict 2007 split"),
    dict(source="cmusphinx g2p-seq2seq", where="Transformer", metric="wer_no_stress",
         value=30.2, note="recent CMUdict, own split"),
    dict(source="Phonetisaurus", where="8-gram", metric="wer_no_stress", value=33.5,
         note="recent CMUdict, own split"),
    dict(source="Phonetisaurus", where="8-gram", metric="per_no_stress", value=6.1,
         note="recent CMUdict, own split"),
]


def get_config(arg=None):
  args = experiment.parse_arg(arg, DEFAULTS)
  c = experiment.base_config()
  # standard: the published g014b2b split, which has no stress digits.
  c.data.name = "cmudict_g2p/" + ("standard" if args["standard"] or args["distilled"] else
                                  "stress" if args["stress"] else "no_stress")
  if args["distilled"]:  # its own data dir: the standard split prepared elsewhere is the real one
    c.data.update(manual_dir=args["distilled"], data_dir=os.path.join(args["distilled"], "data"))
  c.model.update(dict(
      attention=args["attention"], score=args["score"], cell=args["cell"], bidirectional=True,
      src_embed_dim=64, tgt_embed_dim=64, hidden_dim=128, dropout_rate=0.1, max_len=48))
  if args["layers"] > 1:  # else unset: one-layer configs stay as earlier runs recorded them
    c.model.num_layers = args["layers"]
  if args["attention"] == "hard":  # how its choices learn: see experiments/algorithmic.py
    c.model.update(hard_estimator=args["estimator"],
                   expected_context_prob=0.5 if args["xu"] else 0.0)
    c.task.update(reinforce_credit=args["credit"], entropy_bonus=0.002 if args["xu"] else 0.0)
  c.train.steps = args["steps"]  # 3000: about 5 minutes on 2 CPU cores
  c.evals.dev.metrics = "sequence_accuracy,g2p"
  if args["test"]:
    c.evals.test = experiment.test_evaluator(c.evals.dev)
  if args["beam"]:
    experiment.add_beam_evaluators(c, args["beam"])
  if args["smoke"]:
    experiment.apply_smoke(c)
  return c


def sweep(add):
  """No attention vs every attention kind and score (Bahdanau, Luong, Xu et al.)."""
  add(attention="none")
  add(attention="bahdanau", score="additive")
  for score in ("dot", "general", "additive", "location", "cosine", "pearson"):
    add(attention="luong", score=score)
  add(attention="local", score="general")
  add(attention="hard", score="general")


def small(add):
  """No attention vs Luong (dot) vs Bahdanau (additive): `make sweep`, 2 seeds, minutes on 2 cores."""
  add(attention="none")
  add(attention="luong", score="dot")
  add(attention="bahdanau", score="additive")


def converged(add):
  """The best RNN of `sweep` (Luong location) without stress, trained until dev WER stops
  improving, at the sweep's width and at twice the width; the best dev step is scored on test."""
  common = dict(attention="luong", score="location", stress=False, steps=40000, test=True,
                **experiment.CONVERGED)
  add(**common, **WIDE)
  add(**common)


def hard_estimators(add):
  """Soft (Luong general) against hard attention trained by each estimator that learned on
  copy and reverse (experiments/results/hard_attention), on G2P at the same budget."""
  add(attention="luong", score="general")
  add(attention="hard", score="general", credit="step")
  add(attention="hard", score="general", estimator="gumbel")
  add(attention="hard", score="general", credit="step", xu=True)


# The `standard` sweep's run; `standard_levers` changes one thing in it.
STANDARD = dict(attention="luong", score="location", standard=True, steps=40000, test=True,
                beam=4, **experiment.CONVERGED, **WIDE)


def standard(add):
  """Our RNN on the published split (`cmudict_g2p/standard`): the converged sweep's wide
  model trained until dev WER stops improving, its best dev step also beam-decoded (k=4)."""
  add(**STANDARD)


# Where `launch.distill_g2p` writes the teacher's split for `standard_distilled` (README of
# experiments/results/g2p_standard: the teacher is the four-member ensemble chosen on dev).
DISTILLED = "runs/g2p_standard_distilled/ens4"


def standard_distilled(add):
  """Sequence-level knowledge distillation (Kim & Rush 2016): the moving-average run
  trained to the cap (`standard_levers`' best single model) with every train word's
  pronunciation replaced by the teacher ensemble's beam output; dev and test unchanged."""
  add(**{**STANDARD, "optim.ema_decay": 0.999, "train.early_stop_patience": 0},
      distilled=DISTILLED)


def search_space(trial):
  """Optuna's search (`--search=optuna`): learning rate (log-uniform), dropout, the RNN's
  width (its embeddings half as wide, as in the defaults) and Luong attention's score."""
  trial.suggest_float("optim.learning_rate", 3e-4, 1e-2, log=True)
  trial.suggest_float("model.dropout_rate", 0.0, 0.4)
  hidden = trial.suggest_categorical("model.hidden_dim", [64, 128, 256])
  trial.suggest_categorical("score", ["dot", "general", "additive", "location"])
  return {"model.src_embed_dim": hidden // 2, "model.tgt_embed_dim": hidden // 2}


def standard_levers(add):
  """The `standard` run with one lever of issue 18 changed, same seed: label smoothing 0.1
  (Szegedy et al. 2016; our Transformers' default); evaluation with the parameters' moving
  average, decay 0.999 (Polyak averaging, `optim.ema_decay`); that average trained to the
  40,000-step cap without early stopping (patience 10 stopped the first two at 18,000-21,000
  while dev WER was still creeping down); the same with two layers in the encoder and the
  decoder. The one-layer runs are also ensemble members of one another."""
  add(**STANDARD, **{"task.label_smoothing": 0.1})
  add(**STANDARD, **{"optim.ema_decay": 0.999})
  to_the_cap = {**STANDARD, "optim.ema_decay": 0.999, "train.early_stop_patience": 0}
  add(**to_the_cap)
  add(**to_the_cap, layers=2)


def standard_cosine(add):
  """The two-layer moving-average run of `standard_levers` in a quarter of its steps:
  10,000 steps (about 70 minutes on one core) with cosine decay to zero from two peaks, the
  default 3e-3 and half of it, whose mean rate (7.5e-4) is near the rsqrt schedule's over
  such a run (8.5e-4)."""
  short = {**STANDARD, "optim.ema_decay": 0.999, "train.early_stop_patience": 0,
           "optim.schedule": "cosine", "steps": 10000}
  for peak in (3e-3, 1.5e-3):
    add(**short, layers=2, **{"optim.learning_rate": peak})
