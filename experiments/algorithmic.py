r"""Copy, reverse, sort and addition with an RNN encoder-decoder: attention vs none, soft vs
hard attention (Xu et al. 2015), and length generalisation.

Train and dev sequences have 1-20 symbols, test 21-40 (attention_jax/data/algorithmic.py),
so the test split's sequence accuracy measures how far a model generalises in length.
Model selection uses dev sequence accuracy; the best dev step is scored on test.

    python -m attention_jax.main --config=experiments/algorithmic.py:task=reverse --workdir=runs/rev
    python -m launch.sweep --config=experiments/algorithmic.py --root=runs/algorithmic --seeds=3
    python -m launch.sweep --config=experiments/algorithmic.py:steps=1500 \
        --sweep=hard_estimators --seeds=2 --root=runs/hard_estimators

Arguments (after the colon): task, attention, score, steps, smoke, and for hard attention
estimator (reinforce: the REINFORCE surrogate; gumbel: straight-through Gumbel-softmax at
temperature tau), credit (REINFORCE's reward per choice: the whole sequence's
log-likelihood, or from its step on) and xu (Xu et al.'s recipe: entropy bonus 0.002, and
half the minibatches trained on the expected context).
"""
from attention_jax import experiment

DEFAULTS = dict(task="copy", attention="luong", score="dot", steps=3000, smoke=False,
                estimator="reinforce", credit="sequence", tau=1.0, xu=False)


def get_config(arg=None):
  args = experiment.parse_arg(arg, DEFAULTS)
  c = experiment.base_config()
  c.data.name = "algorithmic/" + args["task"]
  c.model.update(dict(
      attention=args["attention"], score=args["score"], cell="gru", bidirectional=True,
      src_embed_dim=32, tgt_embed_dim=32, hidden_dim=128, dropout_rate=0.0, max_len=48,
      hard_estimator=args["estimator"], gumbel_temperature=args["tau"],
      expected_context_prob=0.5 if args["xu"] else 0.0))
  c.task.update(reinforce_credit=args["credit"], entropy_bonus=0.002 if args["xu"] else 0.0)
  c.train.update(steps=args["steps"], select_by="sequence_accuracy")
  # dev and test have 1,000 sequences each: decode them all.
  c.evals.dev.update(every=500, examples=0, metrics="sequence_accuracy,token_error_rate")
  c.evals.test = experiment.test_evaluator(c.evals.dev)
  if args["smoke"]:
    experiment.apply_smoke(c)
  return c


def sweep(add):
  """Every task: no attention, soft (Luong dot) and hard attention."""
  for task in ("copy", "reverse", "sort", "addition"):
    add(task=task, attention="none")
    add(task=task, attention="luong", score="dot")
    add(task=task, attention="hard", score="dot")


def hard_estimators(add):
  """Copy and reverse: soft attention, and hard attention trained by each estimator."""
  for task in ("copy", "reverse"):
    add(task=task, attention="luong", score="dot")
    for estimator, credit in (("reinforce", "sequence"), ("reinforce", "step"),
                              ("gumbel", "sequence")):
      add(task=task, attention="hard", score="dot", estimator=estimator, credit=credit)
    add(task=task, attention="hard", score="dot", credit="step", xu=True)
