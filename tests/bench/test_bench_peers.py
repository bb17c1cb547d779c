"""Each PyTorch peer computes the function we benchmark it against, given our weights.

Small shapes; every parameter is perturbed first, so zero-initialised biases
and their mapping are checked too.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from attention_jax import tasks  # noqa: E402
from attention_jax.models.registry import build_model  # noqa: E402
from bench import attention, decode, rnn_seq2seq, torch_lm, torch_rnn, train_g2p, transformer_lm  # noqa: E402

RNN_SMALL = dict(vocab=23, embed=8, hidden=16, batch=3, src_len=7, tgt_len=5)
LM_SMALL = dict(vocab=37, d_model=16, layers=1, heads=4, d_ff=32, length=8, batch=3)


def _params(model, seed, *args, scale=0.1):
  """Initial parameters plus noise, in one compiled program (op by op, init compiles dozens)."""
  def init():
    shapes = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in args]
    params = nn.meta.unbox(model.lazy_init(jax.random.key(seed), *shapes)["params"])
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    return jax.tree.unflatten(
        tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return jax.jit(init)()


def _mean_nll(logits, targets):
  return jnp.mean(tasks.cross_entropy(logits, targets, 0.0)[1])


def _grad(tensor):
  return tensor.grad.detach().numpy()


# Cell and attention are independent branches of the peer: two pairs run every line.
@pytest.mark.parametrize("cell,attention_kind", [("gru", "bahdanau"), ("lstm", "luong")])
def test_rnn_peer_loss_and_gradients(cell, attention_kind):
  batch = rnn_seq2seq.make_batch(RNN_SMALL)
  args = (batch["inputs"], batch["input_lengths"], batch["decoder_inputs"])
  model = rnn_seq2seq.jax_model(RNN_SMALL, cell, attention_kind)
  params = _params(model, 0, *args)
  loss_fn = lambda p: _mean_nll(model.apply({"params": p}, *args), batch["targets"])
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)

  peer, _ = rnn_seq2seq.torch_peer(RNN_SMALL, cell, attention_kind, params)
  tensors = {k: torch.from_numpy(batch[k]).long() for k in ("inputs", "decoder_inputs", "targets")}
  peer_loss = torch_rnn.loss_fn(peer, tensors)
  peer_loss.backward()
  np.testing.assert_allclose(peer_loss.item(), loss, rtol=1e-5)
  pairs = {
      "readout": (_grad(peer.readout.weight).T, grads["readout"]["kernel"]),
      "encoder input": (_grad(peer.encoder.weight_ih_l0).T,
                        grads["encoder"]["layer_0"]["input"]["kernel"]),
      "encoder recurrent": (_grad(peer.encoder.weight_hh_l0).T,
                            grads["encoder"]["layer_0"]["cell"]["kernel"]),
      "decoder recurrent": (_grad(peer.decoder.weight_hh).T, grads["decoder"]["cell_0"]["kernel"]),
      "decoder bias": (_grad(peer.decoder.bias_ih), grads["decoder"]["input"]["bias"]),
      "combine": (_grad(peer.combine.weight).T, grads["combine"]["kernel"]),
      "source embedding": (_grad(peer.src_embed.weight), grads["src_embed"]["embedding"]),
  }
  if attention_kind == "bahdanau":
    pairs["w_k"] = (_grad(peer.w_k.weight).T, grads["align"]["w_k"])
    pairs["v"] = (_grad(peer.v.weight)[0], grads["align"]["v"])
  for name, (got, want) in pairs.items():
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("cell,score", [("lstm", "general"), ("gru", "location")])
def test_rnn_peer_at_the_g2p_configs(cell, score):
  """The G2P experiments' RNN: bidirectional encoder over padded sources, Luong attention with
  the general or location score, two vocabularies, padded targets, label smoothing."""
  rng = np.random.default_rng(4)
  lengths, target_lengths = np.array([7, 4, 1], np.int32), np.array([5, 2, 3], np.int32)
  batch = {"inputs": rng.integers(1, 19, (3, 7)).astype(np.int32),
           "input_lengths": lengths, "target_lengths": target_lengths,
           "decoder_inputs": rng.integers(1, 23, (3, 5)).astype(np.int32),
           "targets": rng.integers(1, 23, (3, 5)).astype(np.int32),
           "weights": np.ones((3,), np.float32)}
  batch["inputs"][np.arange(7)[None] >= lengths[:, None]] = 0
  config = dict(name="rnn_seq2seq", vocab_size=23, src_vocab_size=19, attention="luong",
                score=score, cell=cell, bidirectional=True, src_embed_dim=6, tgt_embed_dim=8,
                hidden_dim=16, dropout_rate=0.0, max_len=9)
  model = build_model(config)
  args = (batch["inputs"], batch["input_lengths"], batch["decoder_inputs"])
  params = _params(model, 5, *args)
  task = tasks.Seq2SeqTask(model, None, label_smoothing=0.1)
  loss, grads = jax.jit(jax.value_and_grad(
      lambda p: task.loss(p, batch, None, train=False)[0]))(params)

  peer = train_g2p.rnn_peer(config, params)
  tensors = {k: torch.from_numpy(v).long() for k, v in batch.items() if k != "weights"}
  peer_loss = torch_rnn.loss_fn(peer, tensors, label_smoothing=0.1)
  peer_loss.backward()
  np.testing.assert_allclose(peer_loss.item(), loss, rtol=1e-5)
  enc = grads["encoder"]
  pairs = {
      "backward encoder recurrent": (_grad(peer.encoder.weight_hh_l0_reverse).T,
                                     enc["layer_0_backward"]["cell"]["kernel"]),
      "forward encoder input": (_grad(peer.encoder.weight_ih_l0).T,
                                enc["layer_0"]["input"]["kernel"]),
      "memory projection": (_grad(peer.memory_proj.weight).T, grads["memory_proj"]["kernel"]),
      "bridge": (_grad(peer.bridge_h.weight).T, grads["bridge_h_0"]["kernel"]),
      "score": (_grad(peer.w.weight) if score == "general" else _grad(peer.w.weight).T,
                grads["align"]["w"]),
      "source embedding": (_grad(peer.src_embed.weight), grads["src_embed"]["embedding"]),
      "readout": (_grad(peer.readout.weight).T, grads["readout"]["kernel"]),
  }
  for name, (got, want) in pairs.items():
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6, err_msg=name)
  # Padding reaches neither side: the pad token (0) only sits past each source's length.
  assert not np.any(pairs["source embedding"][1][0]) and not np.any(pairs["source embedding"][0][0])


def test_lm_peer_loss_and_gradients():
  batch = transformer_lm.make_batch(LM_SMALL)
  model = transformer_lm.jax_model(LM_SMALL)
  params = _params(model, 2, batch["inputs"])
  loss_fn = lambda p: _mean_nll(model.apply({"params": p}, batch["inputs"]),
                                batch["targets"])
  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)

  peer, _ = transformer_lm.torch_peer(LM_SMALL, params)
  peer_loss = torch_lm.loss_fn(peer, torch.from_numpy(batch["inputs"]).long(),
                               torch.from_numpy(batch["targets"]).long())
  peer_loss.backward()
  np.testing.assert_allclose(peer_loss.item(), loss, rtol=1e-5)
  layer, ours = peer.layers[0], grads["decoder"]["layer_0"]
  d = LM_SMALL["d_model"]
  pairs = {
      "embedding (tied)": (_grad(peer.embed.weight), grads["embed"]["table"]["embedding"]),
      "query kernel": (_grad(layer.self_attn.in_proj_weight)[:d].T,
                       ours["self_attention"]["query"]["kernel"].reshape(d, d)),
      "value bias": (_grad(layer.self_attn.in_proj_bias)[2 * d:],
                     ours["self_attention"]["value"]["bias"].reshape(d)),
      "ffn wi": (_grad(layer.linear1.weight).T, ours["ffn"]["wi"]["kernel"]),
      "ffn norm scale": (_grad(layer.norm2.weight), ours["ffn_norm"]["scale"]),
      "final norm bias": (_grad(peer.final_norm.bias), grads["decoder"]["final_norm"]["bias"]),
  }
  for name, (got, want) in pairs.items():
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("causal", [True, False])
def test_attention_peer_outputs_and_gradients(causal):
  q, k, v, g = attention.inputs(2, 24)
  tq, tk, tv, tg = attention.torch_inputs((q, k, v, g), backward=True)
  want_out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)
  want = [want_out] + list(torch.autograd.grad(want_out, (tq, tk, tv), tg))
  want = [w.detach().numpy().transpose(0, 2, 1, 3) for w in want]
  for impl in attention.OURS:
    def out_and_grads(q, k, v, g, impl=impl):
      forward = attention.jax_fn(impl, causal, backward=False)
      out, vjp = jax.vjp(lambda q, k, v: forward(q, k, v, g), q, k, v)
      return (out,) + vjp(g)
    got = jax.jit(out_and_grads)(q, k, v, g)
    for name, x, w in zip(("out", "dq", "dk", "dv"), got, want):
      np.testing.assert_allclose(x, w, atol=2e-5, err_msg=f"{impl} {name}")
    np.testing.assert_allclose(jax.jit(attention.jax_fn(impl, causal, True))(q, k, v, g)[0],
                               want[1], atol=2e-5, err_msg=f"{impl} jax_fn gradients")


def test_cached_and_recompute_steps_agree():
  """The two greedy step functions give the same logits on the same tokens."""
  model = transformer_lm.jax_model(LM_SMALL, max_len=6)
  variables = {"params": _params(model, 3, jnp.zeros((2, 6), jnp.int32))}
  cached_step, recompute_step, recompute_state = decode.step_functions(model, variables, 6)
  cached_step, recompute_step = jax.jit(cached_step), jax.jit(recompute_step)
  cached_state = model.apply(variables, 2, method=model.init_decode_state)
  state = recompute_state(2)
  tokens = np.random.default_rng(0).integers(1, LM_SMALL["vocab"], size=(6, 2)).astype(np.int32)
  for t in range(6):
    want, cached_state = cached_step(cached_state, tokens[t])
    got, state = recompute_step(state, tokens[t])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=f"step {t}")
