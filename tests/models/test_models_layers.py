"""Layers: the `dot` injection point, RoPE convention, masks, MLP."""

import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.models as jm
from jaxparams.models import layers

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class FakeQ:
  """A stand-in for a quantized kernel: int8 codes and a per-column scale (not an array)."""
  codes: jax.Array
  scale: jax.Array


def _quantize(w):
  scale = jnp.abs(w).max(axis=0, keepdims=True) / 127.0
  return FakeQ(jnp.round(w / scale).astype(jnp.int8), scale)


def test_dot_injection_reaches_every_linear_and_accepts_pytree_kernels():
  module, params, config = jm.from_hf(FIXTURES / "llama_tiny")
  ids = jnp.arange(10, dtype=jnp.int32)[None]
  ref = module.apply({"params": params}, ids)
  seen = []

  def dot(x, w):
    seen.append(type(w).__name__)
    if isinstance(w, FakeQ):
      return x @ (w.codes.astype(x.dtype) * w.scale)
    return x @ w

  qparams = jp.tree.map(_quantize, params, where="**/kernel")
  assert isinstance(qparams["layers_0"]["attn"]["q_proj"]["kernel"], FakeQ)
  out = jm.Llama(config, dot=dot).apply({"params": qparams}, ids)
  assert seen == ["FakeQ"] * (7 * config.num_hidden_layers + 1)   # 7 per layer + lm_head
  # int8 round-off changes logits a little, but not much; an ignored dot would give exact ref.
  err = float(jnp.abs(out - ref).max())
  assert 0 < err < 0.05 * float(jnp.abs(ref).max())


def test_bert_dot_injection_identity_matches():
  cfg = jm.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                      intermediate_size=16, max_position_embeddings=8)
  ids = jnp.array([[1, 2, 3]])
  params = jm.Bert(cfg).init(jax.random.key(0), ids)["params"]
  calls = []
  dot = lambda x, w: (calls.append(w.shape), x @ w)[1]
  a = jm.Bert(cfg).apply({"params": params}, ids)
  b = jm.Bert(cfg, dot=dot).apply({"params": params}, ids)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  assert calls == [(8, 8)] * 4 + [(8, 16), (16, 8)]


def test_linear_shape_error_names_path():
  lin = jm.Linear(3)
  with pytest.raises(ValueError, match=r"kernel has shape \(5, 3\), expected \(4, 3\)"):
    lin.apply({"params": {"kernel": jnp.ones((5, 3))}}, jnp.ones((1, 4)))


def test_rope_matches_complex_rotation_of_half_split_pairs():
  # HF convention: dims i and i + d/2 form the pair rotated by angle pos * inv_freq[i].
  d, pos = 8, 5
  x = jax.random.normal(jax.random.key(0), (1, 1, 1, d))
  inv = layers.rope_frequencies(d, 100.0)
  y = layers.apply_rope(x, jnp.array([[pos]]), inv)
  z = (x[..., : d // 2] + 1j * x[..., d // 2:]) * np.exp(1j * pos * inv)
  np.testing.assert_allclose(y[..., : d // 2], z.real, atol=1e-5)
  np.testing.assert_allclose(y[..., d // 2:], z.imag, atol=1e-5)


def test_llama_padding_mask_and_causality():
  module, params, _ = jm.from_hf(FIXTURES / "llama_tiny")
  ids = jnp.array([[5, 6, 7, 8, 9, 10]])
  apply = jax.jit(module.apply)
  full = apply({"params": params}, ids)
  # Causal: changing a later token leaves earlier logits unchanged.
  changed = apply({"params": params}, ids.at[0, 4].set(99))
  np.testing.assert_allclose(full[:, :4], changed[:, :4], atol=1e-6)
  assert not np.allclose(full[:, 4], changed[:, 4])
  # Right padding with a mask gives the same logits on the real tokens.
  padded = jnp.concatenate([ids, jnp.array([[0, 0]])], axis=1)
  mask = jnp.array([[1] * 6 + [0, 0]])
  out = apply({"params": params}, padded, mask)
  np.testing.assert_allclose(out[:, :6], full, atol=1e-5)


def test_mlp_paths_and_forward():
  mlp = jm.MLP(features=(16, 10), activation="tanh")
  x = jax.random.normal(jax.random.key(1), (3, 64))
  params = mlp.init(jax.random.key(0), x)["params"]
  assert sorted(jp.tree.flatten(params)) == ["layers_0/bias", "layers_0/kernel",
                                              "layers_1/bias", "layers_1/kernel"]
  p = params
  want = jnp.tanh(x @ p["layers_0"]["kernel"] + p["layers_0"]["bias"]) @ p["layers_1"]["kernel"]
  np.testing.assert_allclose(mlp.apply({"params": params}, x), want + p["layers_1"]["bias"],
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="unknown activation 'nope'"):
    jm.MLP(features=(2,), activation="nope").init(jax.random.key(0), x)
