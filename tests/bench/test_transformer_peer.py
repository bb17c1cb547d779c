"""The PyTorch peer of `EncoderDecoderTransformer` computes our loss and gradients from our weights.

Tiny sizes, padded sources and targets and a padding row (length 0, weight 0)
as the data pipeline makes them; every parameter is perturbed first, so
zero-initialised biases and their mapping are checked too. Dropout is built
in on both sides (rate 0.1) and off for the comparison (`deterministic`,
`model.eval()`).
"""
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip("torch")

from attention_jax import experiment, tasks  # noqa: E402
from attention_jax.layers.transformer import sinusoidal_table  # noqa: E402
from attention_jax.models.registry import build_model  # noqa: E402
from attention_jax.train import optim  # noqa: E402
from bench import torch_transformer as peer_lib  # noqa: E402

SMALL = dict(src_vocab=23, vocab=29, d_model=16, heads=2, d_ff=32, layers=2, max_len=8,
             dropout=0.1)
SMOOTHING = 0.1
INPUT_LENGTHS = [7, 4, 1, 0]  # the last row is a padding row (weight 0)
TARGET_LENGTHS = [5, 3, 1, 0]
SRC_LEN, TGT_LEN = 7, 5
EXPERIMENT = os.path.join(os.path.dirname(__file__), "..", "..", "experiments",
                          "g2p_transformer.py")


def _params(model, seed, *args, scale=0.1):
  """Initial-scale parameters plus noise, drawn in NumPy on the model's parameter shapes.

  tests/bench/test_bench_peers.py perturbs the model's own initial values in one compiled
  program; for this model that program took 10-25 s to compile on a loaded 2-core machine,
  so the initial values are drawn here instead, at the scales of our initialisers: kernels
  normal / sqrt(fan-in) (fan-in: the input axes, the two head axes of an attention `out`),
  embeddings normal * d_model^-0.5, layer norm scales 1, biases 0; then noise on every one.
  """
  shapes = nn.meta.unbox(jax.eval_shape(
      lambda: model.init(jax.random.key(seed), *args))["params"])
  rng = np.random.default_rng(seed)

  def draw(path, shape):
    name = path[-1].key
    if name == "scale":
      base = np.ones(shape.shape)
    elif name == "bias":
      base = np.zeros(shape.shape)
    elif name == "embedding":
      base = rng.normal(size=shape.shape) * shape.shape[-1] ** -0.5
    else:
      assert name == "kernel", path
      fan_in = np.prod(shape.shape[:2]) if path[-2].key == "out" else shape.shape[0]
      base = rng.normal(size=shape.shape) / np.sqrt(fan_in)
    return jnp.asarray(base + scale * rng.normal(size=shape.shape), jnp.float32)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _batch(seed=0):
  """A data-pipeline batch: ids >= 4 (0 pad, 1 BOS, 2 EOS), EOS ending each target."""
  rng = np.random.default_rng(seed)
  b = len(INPUT_LENGTHS)
  inputs = np.zeros((b, SRC_LEN), np.int32)
  targets = np.zeros((b, TGT_LEN), np.int32)
  for i, (s, t) in enumerate(zip(INPUT_LENGTHS, TARGET_LENGTHS)):
    inputs[i, :s] = rng.integers(4, SMALL["src_vocab"], size=s)
    if t:
      targets[i, :t] = np.append(rng.integers(4, SMALL["vocab"], size=t - 1), 2)
  decoder_inputs = np.concatenate([np.ones((b, 1), np.int32), targets[:, :-1]], axis=1)
  decoder_inputs[np.asarray(TARGET_LENGTHS) == 0] = 0
  weights = (np.asarray(INPUT_LENGTHS) > 0).astype(np.float32)
  return {"inputs": inputs, "input_lengths": np.asarray(INPUT_LENGTHS, np.int32),
          "decoder_inputs": decoder_inputs, "targets": targets,
          "target_lengths": np.asarray(TARGET_LENGTHS, np.int32), "weights": weights}


@pytest.fixture(scope="module")
def setup():
  batch = _batch()
  model = build_model(peer_lib.flax_model_config(SMALL))
  params = _params(model, 0, batch["inputs"], batch["input_lengths"], batch["decoder_inputs"])
  task = tasks.Seq2SeqTask(model, None, label_smoothing=SMOOTHING)
  value_and_grad = jax.jit(jax.value_and_grad(
      lambda p, b: task.loss(p, b, None, train=False)[0]))  # deterministic: no dropout
  loss, grads = value_and_grad(params, batch)
  peer, _ = peer_lib.make_peer(SMALL, jax.device_get(params))
  peer.eval()
  tensors = peer_lib.to_torch_batch(batch)
  peer_loss = peer_lib.loss_fn(peer, tensors, SMOOTHING)
  peer_loss.backward()
  return dict(batch=batch, params=params, value_and_grad=value_and_grad, loss=loss,
              grads=grads, peer=peer, tensors=tensors, peer_loss=peer_loss)


def _grad(tensor):
  return tensor.grad.detach().numpy()


def _in_proj(mha, which, d):
  """The gradient of one of q, k, v of a fused in-projection, as our kernel [d, d]."""
  i = ("query", "key", "value").index(which)
  return _grad(mha.in_proj_weight)[i * d:(i + 1) * d].T


def test_loss_and_gradients(setup):
  peer, grads, d = setup["peer"], setup["grads"], SMALL["d_model"]
  np.testing.assert_allclose(setup["peer_loss"].item(), setup["loss"], rtol=1e-5)
  enc, dec = grads["encoder"], grads["decoder"]
  t_enc, t_dec = peer.encoder.layers, peer.decoder.layers
  flat = lambda x: np.asarray(x).reshape(d, -1)
  pairs = {
      "source embedding": (_grad(peer.src_embed.weight),
                           grads["source_embed"]["table"]["embedding"]),
      "target embedding": (_grad(peer.tgt_embed.weight),
                           grads["target_embed"]["table"]["embedding"]),
      "encoder self query": (_in_proj(t_enc[0].self_attn, "query", d),
                             flat(enc["layer_0"]["self_attention"]["query"]["kernel"])),
      "encoder self out": (_grad(t_enc[1].self_attn.out_proj.weight).T,
                           np.asarray(enc["layer_1"]["self_attention"]["out"]["kernel"]
                                      ).reshape(-1, d)),
      "decoder self key": (_in_proj(t_dec[0].self_attn, "key", d),
                           flat(dec["layer_0"]["self_attention"]["key"]["kernel"])),
      "decoder self value bias": (_grad(t_dec[1].self_attn.in_proj_bias)[2 * d:],
                                  np.asarray(dec["layer_1"]["self_attention"]["value"]["bias"]
                                             ).reshape(-1)),
      "cross key": (_in_proj(t_dec[0].multihead_attn, "key", d),
                    flat(dec["layer_0"]["cross_attention"]["key"]["kernel"])),
      "cross query": (_in_proj(t_dec[1].multihead_attn, "query", d),
                      flat(dec["layer_1"]["cross_attention"]["query"]["kernel"])),
      "cross norm scale": (_grad(t_dec[0].norm2.weight),
                           dec["layer_0"]["cross_attention_norm"]["scale"]),
      "encoder ffn wi": (_grad(t_enc[1].linear1.weight).T, enc["layer_1"]["ffn"]["wi"]["kernel"]),
      "decoder ffn wo bias": (_grad(t_dec[0].linear2.bias), dec["layer_0"]["ffn"]["wo"]["bias"]),
      "encoder final norm scale": (_grad(peer.encoder.norm.weight), enc["final_norm"]["scale"]),
      "decoder final norm bias": (_grad(peer.decoder.norm.bias), dec["final_norm"]["bias"]),
      "output kernel": (_grad(peer.output.weight).T, grads["output"]["kernel"]),
      "output bias": (_grad(peer.output.bias), grads["output"]["bias"]),
  }
  for name, (got, want) in pairs.items():
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)


def test_padding_is_masked(setup):
  """PAD (id 0) fills only padded positions: with the source padding masked in encoder
  self-attention and cross-attention, and padded targets out of the loss, its embedding rows
  get exactly no gradient on either side (a missing mask on either attention makes it
  nonzero), while real tokens' rows do."""
  peer, grads = setup["peer"], setup["grads"]
  for side, table in (("source_embed", peer.src_embed), ("target_embed", peer.tgt_embed)):
    ours = np.asarray(grads[side]["table"]["embedding"])
    assert np.all(ours[0] == 0.0), f"ours: {side} PAD row"
    assert np.all(_grad(table.weight)[0] == 0.0), f"peer: {side} PAD row"
    assert np.abs(ours[4:]).sum() > 0


def test_positions_and_experiment_sizes():
  """The tutorial's sinusoidal table is ours; the G2P constants are the experiment's."""
  np.testing.assert_allclose(peer_lib.sinusoidal_positions(64, 128).numpy(),
                             sinusoidal_table(64, 128), atol=2e-6)
  c = experiment.config_from_spec(EXPERIMENT)
  sizes = peer_lib.G2P_SIZES
  assert {k: c.model[k] for k in ("d_model", "num_heads", "d_ff", "num_layers", "dropout_rate",
                                  "max_len")} == {
      "d_model": sizes["d_model"], "num_heads": sizes["heads"], "d_ff": sizes["d_ff"],
      "num_layers": sizes["layers"], "dropout_rate": sizes["dropout"],
      "max_len": sizes["max_len"]}
  # What the peer's architecture assumes of the experiment's model.
  assert (c.model.name, c.model.positions, c.model.pre_ln, c.model.weighted,
          c.model.tie_output) == ("transformer", "sinusoidal", True, False, False)
  assert "head_dim" not in c.model and "attention_dropout_rate" not in c.model
  assert c.task.label_smoothing == peer_lib.LABEL_SMOOTHING
  assert dict(c.optim) == peer_lib.G2P_OPTIM and c.train.steps == peer_lib.G2P_STEPS


@pytest.mark.parametrize("schedule", ["rsqrt", "cosine", "constant"])
def test_schedule_matches_optax(schedule):
  config = dict(peer_lib.G2P_OPTIM, schedule=schedule, warmup_steps=40)
  want = optim.make_schedule(config, total_steps=300)
  factor = peer_lib.lr_lambda(config, total_steps=300)
  steps = np.arange(0, 320, 7)
  np.testing.assert_allclose([config["learning_rate"] * factor(int(s)) for s in steps],
                             jax.vmap(want)(steps), rtol=1e-5, atol=1e-9)


def test_train_steps_match_optax(setup):
  """`make_peer` + `train_step` against our optimizer, three steps (warmup 1, so the first
  update is at learning rate 0, as optax's), weight decay on to check it is passed."""
  config = dict(peer_lib.G2P_OPTIM, warmup_steps=1, weight_decay=0.01)
  params, batch, value_and_grad = setup["params"], setup["batch"], setup["value_and_grad"]
  tx, _ = optim.make_optimizer(config, total_steps=100)
  # Our optimizer on the parameters as one vector: the same elementwise update and global
  # norm, one small program (over every leaf it took seconds to compile or dispatch).
  leaves, tree = jax.tree.flatten(jax.device_get(params))
  splits = np.cumsum([x.size for x in leaves])[:-1]
  ravel = lambda xs: np.concatenate([np.ravel(x) for x in jax.device_get(xs)])
  unravel = lambda flat: jax.tree.unflatten(
      tree, [x.reshape(leaf.shape) for x, leaf in zip(np.split(np.asarray(flat), splits), leaves)])

  @jax.jit
  def update(grads, opt_state, flat):
    updates, opt_state = tx.update(grads, opt_state, flat)
    return optax.apply_updates(flat, updates), opt_state

  flat = ravel(leaves)
  opt_state = tx.init(flat)
  peer, opt = peer_lib.make_peer(SMALL, jax.device_get(params), config, total_steps=100)
  peer.eval()
  for step in range(3):
    loss, grads = value_and_grad(unravel(flat), batch)
    flat, opt_state = update(ravel(jax.tree.leaves(grads)), opt_state, flat)
    peer_loss = peer_lib.train_step(peer, opt, setup["tensors"], SMOOTHING)
    np.testing.assert_allclose(peer_loss.item(), loss, rtol=1e-5, err_msg=f"step {step}")
  params = unravel(flat)
  np.testing.assert_allclose(peer.output.weight.detach().numpy().T, params["output"]["kernel"],
                             rtol=1e-4, atol=2e-6)
  np.testing.assert_allclose(
      peer.decoder.layers[0].multihead_attn.in_proj_bias.detach().numpy()[:SMALL["d_model"]],
      jnp.ravel(params["decoder"]["layer_0"]["cross_attention"]["query"]["bias"]),
      rtol=1e-4, atol=2e-6)
