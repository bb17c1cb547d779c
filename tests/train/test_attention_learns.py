"""Trained on reversal, the attention of each output step peaks on the mirrored source position."""
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from attention_jax import data, experiment
from attention_jax.models.registry import build_model
from attention_jax.train import loop

G2P = os.path.join(os.path.dirname(__file__), "..", "..", "experiments", "g2p_attention.py")


def test_reverse_task_learns_an_anti_diagonal(tmp_path, monkeypatch, shared_data_dir,
                                              xla_optimized):
  monkeypatch.setenv("ATTENTION_JAX_DATA_DIR", shared_data_dir)
  config = experiment.load(G2P).get_config("smoke=True,score=general")
  config.data.name = "algorithmic/reverse"
  config.data.batch_size = 32
  config.model.update(hidden_dim=32, src_embed_dim=16, tgt_embed_dim=16, dropout_rate=0.0)
  config.optim.learning_rate = 0.01
  config.train.update(steps=1000, log_every=500, checkpoint_every=1000)
  config.evals.dev.update(every=1000, examples=32, metrics="sequence_accuracy")
  workdir = str(tmp_path / "run")
  result = loop.train_and_evaluate(config, workdir)
  assert os.listdir(result["heatmaps"])  # the PNGs this test reads as numbers below

  dataset = data.get_dataset(config.data.name)
  model = build_model(dict(config.model, vocab_size=dataset.target_vocab.size,
                           src_vocab_size=dataset.input_vocab.size))
  params = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "1000",
                                                           "state"))["params"]
  batch = next(iter(data.make_pipeline(dataset, "dev", batch_size=16, train=False)))
  _, inter = model.apply({"params": params}, batch["inputs"], batch["input_lengths"],
                         batch["decoder_inputs"], mutable=["intermediates"])
  weights = np.asarray(jax.tree.leaves(inter)[0])  # [batch, target, source]
  hits = total = 0
  for b in range(16):
    n = int(batch["target_lengths"][b]) - 1  # output digits, EOS excluded
    peaks = weights[b, :n].argmax(axis=-1)
    hits += int(np.sum(peaks == np.arange(n)[::-1]))  # output t reads source n - 1 - t
    total += n
  print(f"anti-diagonal peaks: {hits}/{total}")
  assert hits / total > 0.9, (hits, total)
