"""The Pallas kernel backends ('splash', 'pallas_gpu') against the einsum reference.

Run in Pallas' interpreter (`interpret=True`), so on CPU. Shapes are small, with
grouped-query heads (4 query heads, 2 key/value heads) throughout; splash needs
blocks of 128 (the TPU lane width), so its short sequences are one padded block.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from attention_jax.attention import core, masks
from attention_jax.layers.multihead import MultiHeadAttention

KERNELS = ["splash", "pallas_gpu"]
BLOCK = {"splash": 128, "pallas_gpu": 16}

# q_len, kv_len, is_causal, scale, and each sequence's (first valid key, valid count)
CASES = {
    # lengths padded to whole blocks, the padded keys out of causal reach
    "causal, no mask, lengths not block multiples": dict(t=24, s=24, is_causal=True, scale=0.3),
    # keys 0-2 of the second sequence are padding, so its queries 0-2 see no key
    "causal, key padding, dead rows": dict(t=16, s=16, is_causal=True, keys=[(0, 11), (3, 13)]),
    "cross, key padding": dict(t=16, s=24, keys=[(0, 24), (0, 9)]),
    # no mask, but the padded keys must be hidden from queries 24-31
    "cross, causal, q_len > kv_len": dict(t=32, s=24, is_causal=True),
    # two splash blocks each way (and nine of pallas_gpu's): the softmax runs across blocks
    "causal, key padding, several blocks": dict(t=144, s=144, is_causal=True,
                                                keys=[(0, 144), (5, 100)]),
}


def _key_mask(keys, s):
  pos = jnp.arange(s)
  valid = jnp.stack([(pos >= start) & (pos < start + count) for start, count in keys])
  return masks.padding_mask(valid)  # [batch, 1, 1, kv_len]


@functools.partial(jax.jit, static_argnames=("implementation", "is_causal", "scale",
                                             "interpret"))
def _value_and_grads(q, k, v, cotangent, mask, *, implementation, is_causal, scale,
                     interpret=True):
  block = BLOCK.get(implementation, 128)

  def loss(q, k, v):
    out = core.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal, scale=scale,
                                     implementation=implementation, block_q=block,
                                     block_k=block, interpret=interpret)
    return jnp.sum(out * cotangent), out

  (_, out), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
  return out, grads


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("implementation", KERNELS)
def test_values_and_gradients_match_reference(implementation, case, btnh_inputs):
  kw = dict(CASES[case])
  t, s, keys = kw.pop("t"), kw.pop("s"), kw.pop("keys", None)
  kw = dict(is_causal=kw.get("is_causal", False), scale=kw.get("scale"))
  q, k, v, cotangent = btnh_inputs(0, t, s)
  mask = None if keys is None else _key_mask(keys, s)
  got, got_grads = _value_and_grads(q, k, v, cotangent, mask, implementation=implementation, **kw)
  want, want_grads = _value_and_grads(q, k, v, cotangent, mask, implementation="reference",
                                      **kw)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=2e-6)
  for g, w, name in zip(got_grads, want_grads, ["query", "key", "value"]):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5, err_msg=f"d/d {name}")
  if case == "causal, key padding, dead rows":
    np.testing.assert_array_equal(np.asarray(got)[1, :3], 0.0)
    np.testing.assert_array_equal(np.asarray(got_grads[0])[1, :3], 0.0)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("implementation, platform", [("pallas_gpu", "gpu"), ("cudnn", "gpu"),
                                                      ("splash", "tpu")])
def test_on_their_device_values_and_gradients_match_reference(implementation, platform, case,
                                                               btnh_inputs):
  """Compiled for the device, not interpreted, in bfloat16 at head_dim 64; the reference
  runs in float32 at full precision on the same bfloat16-rounded inputs."""
  if jax.default_backend() != platform:
    pytest.skip(f"needs JAX's {platform} backend, here {jax.default_backend()!r}; the "
                f"interpreted tests cover the kernels' logic")
  kw = dict(CASES[case])
  t, s, keys = kw.pop("t"), kw.pop("s"), kw.pop("keys", None)
  kw = dict(is_causal=kw.get("is_causal", False), scale=kw.get("scale"))
  inputs = [jnp.asarray(x, jnp.bfloat16) for x in btnh_inputs(0, t, s, h=64)]
  mask = None if keys is None else _key_mask(keys, s)
  got, got_grads = _value_and_grads(*inputs, mask, implementation=implementation,
                                    interpret=False, **kw)
  with jax.default_matmul_precision("highest"):
    want, want_grads = _value_and_grads(*[x.astype(jnp.float32) for x in inputs], mask,
                                        implementation="reference", **kw)
  assert got.dtype == jnp.bfloat16
  for g, w, name in zip((got,) + tuple(got_grads), (want,) + tuple(want_grads),
                        ["output", "d/d query", "d/d key", "d/d value"]):
    error = np.max(np.abs(np.asarray(g, np.float32) - w)) / np.max(np.abs(w))
    assert error < 2e-2, f"{name}: max error {error:.3g} of the largest value"  # bf16 roundings


@pytest.mark.parametrize("implementation", KERNELS)
def test_multihead_layer_passes_is_causal_to_the_kernel(implementation, monkeypatch):
  """The layer gives the kernels is_causal, not a dense causal mask (which they reject);
  in bfloat16, which the kernels keep."""
  x = jnp.float32(np.random.default_rng(1).normal(size=(2, 24, 16)))
  mask = _key_mask([(0, 24), (0, 13)], 24)
  layer = MultiHeadAttention(num_heads=4, head_dim=8, num_kv_heads=2, dtype=jnp.bfloat16)
  # Random parameters of init's shapes (compiling init itself took 4 s).
  shapes = jax.eval_shape(layer.init, jax.random.key(0), x)
  rng = np.random.default_rng(2)
  params = jax.tree.map(lambda a: jnp.float32(rng.normal(size=a.shape) * 0.3), shapes)
  want = jax.jit(lambda p, x: layer.apply(p, x, mask=mask, is_causal=True)[0])(params, x)
  monkeypatch.setattr(core, "dot_product_attention", functools.partial(
      core.dot_product_attention, interpret=True, block_q=BLOCK[implementation],
      block_k=BLOCK[implementation]))
  kernel_layer = layer.clone(implementation=implementation)
  got = jax.jit(lambda p, x: kernel_layer.apply(p, x, mask=mask, is_causal=True)[0])(params, x)
  assert got.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32),
                             rtol=2e-2, atol=2e-2)  # a few bfloat16 roundings apart


@pytest.mark.parametrize("implementation", KERNELS)
def test_unsupported_arguments_give_clear_errors(implementation, btnh_inputs):
  q, k, v, _ = btnh_inputs(0, 16, 16)
  run = functools.partial(core.dot_product_attention, q, k, v, implementation=implementation,
                          interpret=True)
  says = rf"implementation='{implementation}' takes a key-padding mask \[batch, 1, 1, kv_len\]"
  with pytest.raises(ValueError, match=says + r" and is_causal, not a bias.*use 'blockwise'"):
    run(bias=jnp.zeros((1, 4, 16, 16)))
  with pytest.raises(ValueError, match=says + r".*got mask of shape \(2, 4, 16, 16\)"):
    run(mask=jnp.ones((2, 4, 16, 16), bool))
  q_valid = jnp.ones((2, 16), bool)
  with pytest.raises(ValueError, match=says + r".*got mask of shape \(2, 1, 16, 16\)"):
    run(mask=masks.padding_mask(q_valid, q_valid))
  with pytest.raises(ValueError, match=says + r".*got mask of shape \(1, 1, 16, 16\)"):
    run(mask=masks.causal_mask(16))
  bad_block = 64 if implementation == "splash" else 24
  with pytest.raises(ValueError, match=rf"'{implementation}' needs block_q a "):
    run(block_q=bad_block)


def test_kernels_need_their_device_unless_interpreted(btnh_inputs):
  q, k, v, _ = btnh_inputs(0, 16, 16)
  backend = jax.default_backend()
  for implementation, platform, device in [("splash", "tpu", "a TPU"),
                                           ("pallas_gpu", "gpu", "a GPU")]:
    if backend == platform:
      continue
    with pytest.raises(ValueError, match=rf"implementation='{implementation}' needs {device}, "
                       rf"but JAX's backend is '{backend}'; use 'blockwise' or 'xla' here"):
      core.dot_product_attention(q, k, v, implementation=implementation)


def test_implementations_list_the_kernels():
  assert {"splash", "pallas_gpu"} <= set(core.IMPLEMENTATIONS)
