"""Sweep expansion: products and zips as loops, seeds, directory names and commands."""
import os
import sys
import textwrap

import pytest

from launch import trials

EXPERIMENT = textwrap.dedent('''
    from attention_jax import experiment
    DEFAULTS = dict(attention="luong", score="dot", cell="lstm", smoke=False)

    def get_config(arg=None):
      args = experiment.parse_arg(arg, DEFAULTS)
      c = experiment.base_config()
      c.model.update(attention=args["attention"], score=args["score"], cell=args["cell"])
      return c

    def sweep(add):
      for cell in ("gru", "lstm"):  # a product
        for score in ("dot", "general", "additive"):
          add(cell=cell, score=score)

    def zipped(add):
      for score, lr in zip(("dot", "general"), (1e-3, 3e-3)):
        add(score=score, **{"optim.learning_rate": lr})

    def misspelt(add):
      add(scor="dot")

    def bad_key(add):
      add(**{"optim.learning_rat": 1.0})

    def twice(add):
      add(score="dot")
      add(score="dot")

    def empty(add):
      pass
''')


@pytest.fixture
def spec(tmp_path):
  path = tmp_path / "exp.py"
  path.write_text(EXPERIMENT)
  return str(path)


def test_product_seeds_and_names(spec):
  grid = trials.expand(spec)
  assert [t.name for t in grid] == [f"cell={c},score={s}" for c in ("gru", "lstm")
                                    for s in ("dot", "general", "additive")]
  seeded = trials.expand(spec, seeds=3)
  assert len(seeded) == 18
  assert [t.overrides for t in seeded[:3]] == [dict(cell="gru", score="dot", seed=s)
                                               for s in range(3)]
  assert seeded[1].name == "cell=gru,score=dot,seed=1"
  assert len({t.name for t in seeded}) == 18
  more = trials.expand(spec, seeds="3:5")  # seeds 3 and 4, named as --seeds=5 names them
  assert [t.name for t in more] == [t.name for t in trials.expand(spec, seeds="5")
                                    if t.overrides["seed"] >= 3]
  assert [t.config.seed for t in more[:2]] == [3, 4]
  for bad in ("-1", "2:2", "3:1", "x", "1:y", "-1:2"):
    with pytest.raises(ValueError, match=f"--seeds={bad}: expected K"):
      trials.expand(spec, seeds=bad)


def test_command_merges_spec_arguments_overrides_and_seed(spec):
  trial = trials.expand(spec + ":smoke=True,score=general", sweep="zipped", seeds=2)[3]
  assert trial.overrides == {"score": "general", "optim.learning_rate": 3e-3, "seed": 1}
  assert trial.name == "optim.learning_rate=0.003,score=general,seed=1"
  assert trial.command(spec + ":smoke=True,score=general", "/w") == [
      sys.executable, "-m", "attention_jax.main", f"--config={spec}:smoke=True,score=general",
      "--config.optim.learning_rate=0.003", "--config.seed=1", "--workdir=/w"]


def test_a_bare_boolean_argument_reaches_the_trainer_bare(spec):
  trial = trials.expand(spec + ":smoke,score=general", sweep="zipped")[0]
  assert trials.split_spec(spec + ":smoke,score=dot") == (spec, {"smoke": None, "score": "dot"})
  assert trial.overrides["score"] == "dot"  # the trial's own value wins over the spec's
  assert trial.command(spec + ":smoke,score=general", "/w")[3] == f"--config={spec}:smoke,score=dot"


@pytest.mark.parametrize("overrides", [
    {"data.name": "cmudict_g2p/no_stress", "note": "a/b c"},
    {"x": "1,y=2"},
    {"x": "v" * 200},
])
def test_unsafe_or_long_names_are_cut_and_hashed(overrides):
  name = trials.trial_name(overrides)
  assert len(name) <= 96 and os.sep not in name and " " not in name
  other = dict(overrides, extra=1)
  assert trials.trial_name(other) != name
  assert name == trials.trial_name(dict(reversed(list(overrides.items()))))  # order-free


def test_names_read_back_when_safe():
  assert trials.trial_name({}) == "default"
  assert trials.trial_name({"seed": 0, "heads": 8, "pre_ln": False}) == "heads=8,pre_ln=False,seed=0"
  assert trials.trial_name({"x": "1,y=2"}) != trials.trial_name({"x": "1", "y": "2"})


@pytest.mark.parametrize("sweep,message", [
    ("misspelt", "trial scor=dot: unknown config argument 'scor'"),
    ("bad_key", "config has no key 'optim.learning_rat'"),
    ("twice", "adds trial score=dot twice"),
    ("empty", "added no trials"),
    ("nosuch", "has no sweep function 'nosuch'"),
])
def test_bad_sweeps_name_the_problem(spec, sweep, message):
  with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
    trials.expand(spec, sweep=sweep)


def test_every_experiment_sweep_expands():
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  experiments = os.path.join(root, "experiments")
  for name in sorted(os.listdir(experiments)):
    if name.endswith(".py"):
      path = os.path.join(experiments, name)
      grid = trials.expand(path)
      # A sweep that orders its seeds itself (speech_digits: seed by seed) takes no --seeds.
      assert any("seed" in t.overrides for t in grid) or trials.expand(path, seeds=2)
