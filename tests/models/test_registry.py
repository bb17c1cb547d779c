"""build_model: every model kind from a config dict, and clear errors for bad keys."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from attention_jax.models.registry import MODELS, build_model

CONFIGS = {
    "rnn_seq2seq": dict(vocab_size=9, attention="bahdanau", score="additive", cell="gru",
                        hidden_dim=16, src_embed_dim=8, tgt_embed_dim=8),
    "transformer": dict(vocab_size=9, d_model=16, num_heads=2, d_ff=32, num_layers=1,
                        max_len=16),
    "lm": dict(vocab_size=9, d_model=16, num_heads=2, d_ff=32, num_layers=1, max_len=16),
    "speech": dict(vocab_size=9, feature_dim=6, hidden_dim=16, attention_dim=8,
                   tgt_embed_dim=8, frontend_channels=2, score="location_aware"),
    "image_rnn": dict(vocab_size=9, image_height=6, channels=(2,), hidden_dim=16,
                      attention="luong", score="additive", sentinel=True, tgt_embed_dim=8),
    "image_transformer": dict(vocab_size=9, image_height=6, channels=(2,), d_model=16,
                              num_heads=2, d_ff=32, num_layers=1, max_len=16, grid_blocks=1),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model_builds_from_a_config_and_runs(name):
  config = ml_collections.ConfigDict(dict(CONFIGS[name], name=name, dtype="bfloat16"))
  model = build_model(config)
  assert model.dtype == jnp.bfloat16
  inputs, lengths = jnp.array([[3, 4, 5, 0], [6, 7, 8, 5]]), jnp.array([3, 4])
  targets_in = jnp.array([[1, 3, 4], [1, 5, 6]])
  args = (targets_in,) if name == "lm" else (inputs, lengths, targets_in)
  if name == "speech" or name.startswith("image"):  # frames or columns [batch, n, 6]
    args = (jnp.ones((2, 9, 6)), jnp.array([9, 5]), targets_in)
  variables = jax.jit(model.init)(jax.random.key(0), *args)  # eagerly: one compile per op
  logits = jax.jit(model.apply)(variables, *args)
  if name == "speech":
    ctc = jax.jit(lambda v: model.apply(v, *args, heads=("ctc",)))(variables)
    assert ctc["ctc"].shape == (2, 3, 9)
    logits = logits["attention"]
  assert logits.shape == (2, 3, 9) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()


def test_unknown_names_and_fields_are_named():
  with pytest.raises(ValueError, match=r"model.name='rnn' is unknown; known: rnn_seq2seq"):
    build_model({"name": "rnn"})
  with pytest.raises(ValueError, match=r"model.num_head is not a field of EncoderDecoderTransformer"):
    build_model(dict(CONFIGS["transformer"], name="transformer", num_head=2))
  with pytest.raises(ValueError, match=r"model.dtype='float33' is not a dtype"):
    build_model(dict(CONFIGS["lm"], name="lm", dtype="float33"))


def test_list_fields_from_a_json_config_become_tuples():
  """predict rebuilds the model from config.json, where tuples come back as lists; a model
  is a static argument of jitted decoding, so it must hash."""
  config = dict(CONFIGS["image_rnn"], name="image_rnn", channels=[2, 3])
  model = build_model(config)
  assert model.channels == (2, 3) and hash(model) == hash(build_model(config))
