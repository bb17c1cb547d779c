"""Whole-config checks before any write: value ranges, experiment files, override names."""
import glob
import inspect
import math
import os

import pytest

from attention_jax import experiment
from attention_jax.train import validate
from launch import trials as trials_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))
G2P = os.path.join(ROOT, "experiments", "g2p_attention.py")


@pytest.mark.parametrize("path", EXPERIMENTS, ids=os.path.basename)
def test_every_shipped_config_and_sweep_trial_is_in_range(path):
  module = experiment.load(path)
  configs = [module.get_config(), module.get_config("smoke=True")]
  for config in configs:  # the whole check that needs no data
    validate.check_config(config)
  for name in sweep_names(module):
    for trial in trials_lib.expand(path, name, 0):
      validate.check_ranges(trial.config)


def sweep_names(module):
  """The module's sweeps: its own functions of one argument, `add`."""
  return [name for name, fn in vars(module).items()
          if inspect.isfunction(fn) and fn.__module__ == module.__name__
          and list(inspect.signature(fn).parameters) == ["add"]]


def test_sweep_names_finds_every_g2p_sweep():
  names = sweep_names(experiment.load(G2P))
  assert {"sweep", "small", "standard", "standard_levers", "standard_cosine"} <= set(names)
  assert "get_config" not in names and "search_space" not in names


@pytest.mark.parametrize("key,value,allowed", [
    ("train.steps", -5, "[1, inf)"),
    ("train.keep_checkpoints", 0, "[1, inf)"),
    ("train.log_every", 0, "[1, inf)"),
    ("optim.learning_rate", -0.01, "[0, inf)"),
    ("optim.learning_rate", math.nan, "[0, inf)"),
    ("optim.learning_rate", math.inf, "[0, inf)"),
    ("optim.b2", 1.0, "[0, 1)"),
    ("optim.weight_decay", -1e-4, "[0, inf)"),
    ("task.label_smoothing", 1.0, "[0, 1)"),
    ("model.dropout_rate", 1.5, "[0, 1)"),
    ("model.dropout_rate", -0.1, "[0, 1)"),
    ("model.hidden_dim", 0, "[1, inf)"),
    ("evals.dev.temperature", math.nan, "(0, inf)"),
    ("evals.dev.temperature", 0.0, "(0, inf)"),
    ("evals.dev.beam_alpha", -1.0, "[0, inf)"),
])
def test_out_of_range_values_name_the_key_and_the_interval(key, value, allowed):
  config = experiment.load(G2P).get_config("smoke=True")
  *sections, name = key.split(".")
  node = config
  for section in sections:
    node = node[section]
  node[name] = value
  with pytest.raises(validate.ConfigError) as error:
    validate.check_config(config)
  assert str(error.value) == (f"{key}={value!r} is out of range; allowed: a number in "
                              f"{allowed}")


@pytest.mark.parametrize("every,message", [
    (0, "train.select_eval='dev' is not a periodic evaluator (every > 0, use_best False); "
        "periodic: none"),
    (-1, "evals.dev.every must be at least 0, got -1"),
])
def test_an_evaluator_that_never_runs_cannot_select(every, message):
  config = experiment.load(G2P).get_config("smoke=True")
  config.evals.dev.every = every
  with pytest.raises(validate.ConfigError) as error:
    validate.check_config(config)
  assert str(error.value) == message


def test_a_misspelt_selection_metric_is_refused_without_the_data():
  config = experiment.load(G2P).get_config("smoke=True")
  config.train.select_by = "werr"
  with pytest.raises(validate.ConfigError) as error:
    validate.check_config(config)  # check_config opens no data set
  assert str(error.value).startswith("train.select_by='werr' is not a metric of evaluator 'dev'")


def test_in_range_edges_pass():
  config = experiment.load(G2P).get_config("smoke=True")
  config.model.dropout_rate, config.optim.weight_decay, config.optim.b1 = 0.0, 0.0, 0.0
  config.train.checkpoint_every, config.task.label_smoothing = 0, 0.99
  config.optim.learning_rate = 0.0  # a frozen model: a baseline, not a mistake
  validate.check_ranges(config)


def _write(tmp_path, text, name="exp.py"):
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def test_experiment_file_mistakes_are_one_line_with_file_and_line(tmp_path):
  cases = {
      "def get_config(arg=None):\n  x = (\n": ":2: syntax error: '(' was never closed",
      "import os\nX = 1 / 0\n": ":2: ZeroDivisionError: division by zero",
      "def get_config(arg=None):\n  return {}['data']\n": ":2: KeyError: 'data'",
      "X = 1\n": " defines no get_config(arg=None)",
  }
  for i, (text, tail) in enumerate(cases.items()):
    path = _write(tmp_path, text, f"exp{i}.py")
    with pytest.raises(ValueError) as error:
      experiment.config_from_spec(path)
    assert str(error.value) == path + tail
  with pytest.raises(ValueError, match=r"^no experiment file at '.*nosuch.py'$"):
    experiment.config_from_spec(str(tmp_path / "nosuch.py"))


def test_unknown_experiment_argument_suggests_the_close_one():
  with pytest.raises(ValueError) as error:
    experiment.config_from_spec(f"{G2P}:smok=True")
  assert str(error.value) == (f"--config={G2P}:smok=True: unknown config argument 'smok'; "
                              "did you mean 'smoke'? known: attention, score, cell, stress, "
                              "standard, steps, test, beam, smoke, layers, estimator, credit, xu, "
                              "distilled")


@pytest.mark.parametrize("dotted,message", [
    ("train.steps", None),
    ("evals.dev.beam_size", None),
    ("train.stepz", "--config.train.stepz: no such config key; did you mean --config.train.steps?"),
    ("trian.steps", "--config.trian.steps: no such config key; did you mean --config.train?"),
    ("train.steps.x", "--config.train.steps.x: train.steps is a value, not a section"),
    ("evals.test.split", "--config.evals.test.split: no such config key; known: dev"),
])
def test_override_names_are_checked(dotted, message):
  config = experiment.load(G2P).get_config("smoke=True")
  if message is None:
    experiment.check_override(config, dotted)
    return
  with pytest.raises(ValueError) as error:
    experiment.check_override(config, dotted)
  assert str(error.value) == message


def test_a_bare_boolean_argument_means_true():
  assert (experiment.config_from_spec(f"{G2P}:smoke,stress=False").to_dict()
          == experiment.load(G2P).get_config("smoke=True,stress=False").to_dict())
  assert experiment.parse_arg("b", dict(a=1, b=False)) == dict(a=1, b=True)
  with pytest.raises(ValueError, match=r"^config argument 'a' needs a value \(a=...\); a bare "
                     "name is for boolean arguments only$"):
    experiment.parse_arg("a", dict(a=1, b=False))
  with pytest.raises(ValueError, match="unknown config argument 'smok'; did you mean 'smoke'?"):
    experiment.parse_arg("smok", dict(smoke=False))


@pytest.mark.parametrize("key,value,message", [
    ("ctc_weight", 1.5, "task.ctc_weight=1.5 is out of range; allowed: a number in [0, 1]"),
    ("time_width", -3, "task.time_width=-3 is out of range; allowed: a number in [0, inf)"),
    ("ctc_decode_weight", 0.3, "task.ctc_decode_weight=0.3 needs a trained CTC head: "
                               "task.ctc_weight is 0"),
    ("model.frontend_channels", 0,
     "model.frontend_channels=0 is out of range; allowed: a number in [1, inf)"),
    ("model.conv_width", 0, "model.conv_width=0 is out of range; allowed: a number in [1, inf)"),
    ("model.conv_filters", -2,
     "model.conv_filters=-2 is out of range; allowed: a number in [1, inf)"),
])
def test_speech_task_values_are_checked_before_anything_runs(key, value, message):
  config = experiment.load(os.path.join(ROOT, "experiments", "speech_digits.py")).get_config(
      "smoke,ctc_weight=0.0,score=location_aware")
  section, name = key.split(".") if "." in key else ("task", key)
  config[section][name] = value
  with pytest.raises(validate.ConfigError) as error:
    validate.check_config(config)
  assert str(error.value) == message


@pytest.mark.parametrize("name", ["g2p_transformer.py", "lm_chars.py"])
def test_the_attention_backend_is_a_config_key_checked_against_the_platform(name):
  """model.implementation picks the Transformers' attention backend; an unknown one, or a
  kernel for another device, is one line naming the key before anything runs."""
  config = experiment.load(os.path.join(ROOT, "experiments", name)).get_config("smoke")
  config.model.implementation = "blockwise"
  validate.check_config(config)
  config.model.implementation = "flash"
  with pytest.raises(validate.ConfigError, match=r"^model.implementation='flash' is unknown; "
                     r"known: reference, blockwise, xla, cudnn, splash, pallas_gpu$"):
    validate.check_config(config)
  config.model.implementation = "splash"
  with pytest.raises(validate.ConfigError, match=r"^model.implementation='splash' needs a TPU, "
                     r"but JAX's backend is 'cpu'; use 'blockwise' or 'xla' here$"):
    validate.check_config(config)


@pytest.mark.parametrize("path", ["experiments/algorithmic.py", "experiments/g2p_attention.py"])
def test_hard_attention_arguments_reach_the_model_and_the_task(path):
  """estimator / credit / xu set Xu et al.'s recipe (per-step credit, entropy bonus 0.002,
  the expected context with probability 0.5) or the straight-through Gumbel estimator."""
  get_config = experiment.load(path).get_config
  xu = get_config("attention=hard,credit=step,xu=True")
  assert (xu.model.hard_estimator, xu.model.expected_context_prob) == ("reinforce", 0.5)
  assert (xu.task.reinforce_credit, xu.task.entropy_bonus) == ("step", 0.002)
  gumbel = get_config("attention=hard,estimator=gumbel")
  assert (gumbel.model.hard_estimator, gumbel.model.expected_context_prob) == ("gumbel", 0.0)
  assert (gumbel.task.reinforce_credit, gumbel.task.entropy_bonus) == ("sequence", 0.0)
  for config in (xu, gumbel):
    validate.check_config(config)
