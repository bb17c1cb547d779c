"""Evaluators: an unbiased seeded sample of the split, decode budgets that let an output run
past its reference, and lengths the model cannot decode refused naming both."""
import json

import jax
import numpy as np
import pytest

from attention_jax import experiment, tasks
from attention_jax.data import algorithmic, registry
from attention_jax.models.registry import build_model
from attention_jax.train import evaluators, optim, partition, setup, validate

# One xdist worker runs the whole module: its module fixtures are built once.
pytestmark = pytest.mark.xdist_group("test_evaluators")

SIZES = (("train", 240), ("dev", 300), ("test", 40))


@pytest.fixture(scope="module")
def copy_data(tmp_path_factory):
  config = algorithmic.make_config("copy", name="copy_eval_tests", sizes=SIZES,
                                   train_lengths=(1, 6), test_lengths=(7, 12))
  return registry.get_dataset("algorithmic", data_dir=str(tmp_path_factory.mktemp("data")),
                              config=config)


def test_sample_is_the_same_for_a_seed_and_spread_over_the_split():
  a, b = evaluators.sample_indices(2670, 1000, 0), evaluators.sample_indices(2670, 1000, 0)
  np.testing.assert_array_equal(a, b)
  assert len(set(a.tolist())) == 1000 and a.min() >= 0 and a.max() < 2670
  assert not np.array_equal(a, evaluators.sample_indices(2670, 1000, 1))
  # Not the first 1,000 records: each tenth of the split holds about a tenth of the sample
  # (binomial sd ~ 9.5 around 100; 60 and 140 are 4 sd away).
  counts = np.bincount(a * 10 // 2670, minlength=10)
  assert counts.min() > 60 and counts.max() < 140, counts
  assert evaluators.sample_indices(2670, 0, 0) is None
  assert evaluators.sample_indices(50, 50, 0) is None  # the whole split


class _Out:
  def __init__(self, tmp_path):
    self.workdir, self.is_main, self.lines = str(tmp_path), True, []
    self.progress = self
    self.writer = None

  def write(self, line):
    self.lines.append(line)


def _evaluator(task, cfg, tmp_path):
  tx, schedule = optim.make_optimizer(dict(
      name="adam", learning_rate=1e-3, warmup_steps=0, schedule="constant", b1=0.9, b2=0.98,
      weight_decay=0.0, grad_clip_norm=0.0), 10)
  mesh = partition.make_mesh((-1, 1))
  state, shardings = setup.create_state(task, tx, jax.random.key(0), 8, mesh)
  _, eval_step = setup.jit_steps(task, shardings, mesh, schedule=schedule)
  return evaluators.Evaluator("dev", cfg, task, mesh, eval_step, 32, _Out(tmp_path)), state


def _rnn_task(dataset):
  model = build_model(dict(name="rnn_seq2seq", vocab_size=dataset.target_vocab.size,
                           src_vocab_size=dataset.input_vocab.size, hidden_dim=16,
                           src_embed_dim=8, tgt_embed_dim=8, attention="luong", score="dot"))
  return tasks.Seq2SeqTask(model, dataset)


def test_evaluator_decodes_exactly_its_sample_and_past_the_references(copy_data, tmp_path):
  cfg = experiment.evaluator(examples=50, sample_seed=3, heatmaps=0, show=0, predictions=True,
                             metrics="sequence_accuracy,token_error_rate")
  ev, state = _evaluator(_rnn_task(copy_data), cfg, tmp_path)
  texts = copy_data.texts("dev")
  longest = max(len(r) for t in texts for r in t["references"])
  assert ev.max_len > longest + 1  # the budget leaves room past the longest reference + EOS
  scores = ev.run(state.params, 0)
  records = [json.loads(line)
             for line in open(tmp_path / "predictions_dev.jsonl")]
  sample = evaluators.sample_indices(300, 50, 3)
  assert [r["source"] for r in records] == [texts[i]["inputs"] for i in sample]
  # The untrained model runs on past its reference: the gold length no longer cuts it short.
  assert max(len(r["prediction"]) - len(r["references"][0]) for r in records) > 0
  assert any(len(r["prediction"]) > longest for r in records)
  accuracy = np.mean([r["prediction"] in r["references"] for r in records])
  assert scores["sequence_accuracy"] == pytest.approx(accuracy)


def test_a_long_evaluation_says_how_far_it_is(copy_data, tmp_path, monkeypatch):
  """A progress line each PROGRESS_EVERY_S: the examples done before each batch, of the
  sample; none while an evaluation is shorter than that."""
  cfg = experiment.evaluator(examples=150, heatmaps=0, show=0, metrics="sequence_accuracy")
  task = _rnn_task(copy_data)
  ev, state = _evaluator(task, cfg, tmp_path)
  ev.run(state.params, 0)
  assert not [line for line in ev.out.lines if "examples," in line]
  monkeypatch.setattr(evaluators, "PROGRESS_EVERY_S", 0.0)
  ev.run(state.params, 0)
  done = [int(line.split()[2]) for line in ev.out.lines if "of 150 examples," in line]
  sizes = [int(np.sum(b["index"] >= 0))
           for b in task.batches("dev", batch_size=32, indices=ev.indices)]
  assert len(sizes) > 2 and done == np.cumsum([0] + sizes[:-1]).tolist()


def test_a_decode_longer_than_the_positional_table_is_refused(copy_data):
  config = experiment.load("experiments/g2p_transformer.py").get_config("smoke=True")
  config.model.max_len = 16
  task = tasks.build_task(config, copy_data)
  config.evals.dev.max_len = 40
  with pytest.raises(validate.ConfigError, match=r"evals.dev.max_len=40 is longer .*model.max_len=16"):
    validate.check_with_data(config, task)
  config.evals.dev.update(max_len=0, split="test")  # test targets reach 12 + EOS: fits, cut at 16
  validate.check_with_data(config, task)
  assert evaluators.decode_budget(task, config.evals.dev) == 16
  batch = task.example_batch(2)
  params = task.init(jax.random.key(0), batch)["params"]
  with pytest.raises(ValueError, match="decode length=17 is longer .*model.max_len=16"):
    task.predict(params, batch, max_len=17)


def test_bad_evaluator_values_name_the_key():
  config = experiment.load("experiments/g2p_attention.py").get_config("smoke=True")
  for key, value, message in (("decode", "nucleus", "evals.dev.decode='nucleus' is unknown"),
                              ("split", "val", "evals.dev.split='val' is not a split"),
                              ("metrics", "wer", "unknown scorer 'wer'"),
                              ("beam_size", 0, "evals.dev.beam_size must be at least 1")):
    bad = experiment.load("experiments/g2p_attention.py").get_config("smoke=True")
    bad.evals.dev[key] = value
    with pytest.raises(validate.ConfigError, match=message):
      validate.check_config(bad)
  config.train.select_by = "werr"
  task = tasks.build_task(config, None, vocab_size=16)
  with pytest.raises(validate.ConfigError, match="train.select_by='werr' is not a metric"):
    validate.selection_metric(config, task)


@pytest.mark.parametrize("name", ["g2p_attention", "g2p_transformer"])
def test_g2p_beam_argument_adds_beam_evaluators_at_the_best_step(name):
  """`beam=k` re-decodes dev (and test) at the best greedy-dev step by beam search of width
  k, over the whole split; selection stays with the greedy dev evaluator."""
  load = experiment.load(f"experiments/{name}.py").get_config
  assert set(load("standard=True,test=True").evals) == {"dev", "test"}
  config = load("standard=True,test=True,beam=5")
  validate.check_config(config)
  assert config.data.name == "cmudict_g2p/standard"
  assert set(config.evals) == {"dev", "test", "dev_beam", "test_beam"}
  for name, split in (("dev_beam", "dev"), ("test_beam", "test")):
    ev = config.evals[name]
    assert (ev.split, ev.decode, ev.beam_size, ev.every, ev.use_best, ev.examples) == (
        split, "beam", 5, 0, True, 0)
    assert ev.metrics == config.evals.dev.metrics
  assert config.evals.dev.decode == "greedy" and config.evals.dev.every > 0
  assert set(load("beam=2").evals) == {"dev", "dev_beam"}  # no test evaluator without test
