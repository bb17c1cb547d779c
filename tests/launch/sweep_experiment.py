"""A tiny experiment for the launcher tests: the smoke RNN on the copy task, seconds a trial.

`sweep` and friends are grids (`launch.sweep --sweep=NAME`), `search_space` a search
(`launch.sweep --search=optuna`).
"""
from attention_jax import experiment

DEFAULTS = dict(attention="luong", score="dot", steps=6)


def get_config(arg=None):
  args = experiment.parse_arg(arg, DEFAULTS)
  c = experiment.base_config()
  c.data.name = "algorithmic/copy"
  c.model.update(dict(attention=args["attention"], score=args["score"], cell="gru",
                      bidirectional=True, src_embed_dim=8, tgt_embed_dim=8, hidden_dim=16,
                      dropout_rate=0.0, max_len=24))
  experiment.apply_smoke(c)
  c.train.steps = args["steps"]
  c.evals.dev.update(examples=16, heatmaps=0, show=0, metrics="sequence_accuracy,token_error_rate")
  return c


def sweep(add):
  """Four trials; `attention=bogus` fails (exit 2, named in its log)."""
  add(attention="none")
  for score in ("dot", "general"):
    add(attention="luong", score=score)
  add(attention="bogus")


def long(add):
  """One trial long enough to be interrupted."""
  add(**{"train.steps": 60, "train.checkpoint_every": 5, "evals.dev.every": 30})


def single(add):
  """One quick trial (the SLURM path through submitit's local executor)."""
  add(attention="luong", score="general")


def search_space(trial):
  """The search of tests/launch/test_search.py: the learning rate makes a trial good or bad (a
  bad one is pruned), `attention=bogus` fails (exit 2); dev is scored every 5 steps."""
  trial.suggest_categorical("attention", ["luong", "none", "bogus"])
  trial.suggest_float("optim.learning_rate", 1e-5, 3e-2, log=True)
  return {"evals.dev.every": 5, "train.checkpoint_every": 1000}
