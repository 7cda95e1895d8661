"""Rotation folding (QuaRot) keeps every family's function; Hadamard matrices and the FWHT."""

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.quant import hadamard, rotate as qrot
from jaxparams.quant.online import OnlineLinear, online_dot

FIX = Path(__file__).resolve().parents[1] / "fixtures"
FAMILY_DIRS = sorted(str(p) for p in (FIX / "families").iterdir() if p.is_dir()) + [
    str(FIX / "llama_tiny"), str(FIX / "llama_tiny_tied"), str(FIX / "bert_mlm_tiny")]


@pytest.mark.parametrize("n", [2, 12, 20, 24, 28, 36, 96, 384, 1536])
def test_hadamard_is_hadamard(n):
  h = hadamard.hadamard_matrix(n)
  assert set(np.unique(h)) <= {-1, 1}
  np.testing.assert_array_equal(h @ h.T, n * np.eye(n, dtype=np.int64))


@pytest.mark.parametrize("n", [8, 12, 96, 384, 43 * 2])
def test_fwht_matches_dense_rotation(n):
  d = hadamard.random_signs(n, 5)
  x = np.random.default_rng(0).normal(size=(3, 2, n)).astype(np.float32)
  got = hadamard.fwht(jnp.asarray(x), jnp.asarray(d, jnp.float32), seed=9)
  want = x.astype(np.float64) @ hadamard.rotation_matrix(n, d, seed=9)
  chex.assert_trees_all_close(np.asarray(got, np.float64), want, atol=2e-5)
  r = hadamard.rotation_matrix(n, d, seed=9)
  np.testing.assert_allclose(r @ r.T, np.eye(n), atol=1e-12)


def test_rotation_spreads_an_outlier():
  x = np.zeros((1, 384), np.float32)
  x[0, 7] = 100.0
  y = np.asarray(hadamard.fwht(jnp.asarray(x), jnp.asarray(hadamard.random_signs(384, 0))))
  np.testing.assert_allclose(np.abs(y), 100.0 / np.sqrt(384), rtol=1e-5)


def _inputs(config, bert: bool):
  ids = jax.random.randint(jax.random.key(3), (2, 7), 1, min(config.vocab_size, 200))
  mask = jnp.array([[1] * 7, [1] * 5 + [0] * 2])
  return (ids, mask)


@pytest.mark.parametrize("folder", FAMILY_DIRS, ids=lambda p: Path(p).name)
def test_rotated_model_equals_original(folder):
  module, params, _ = jp.models.from_hf(folder)
  cfg = module.config
  bert = isinstance(cfg, jp.models.BertConfig)
  args = _inputs(cfg, bert)
  r = qrot.rotate(params, cfg)
  assert r.sites
  # The rotation changed the weights (not the identity) ...
  flat0, flat1 = jp.tree.flatten(params), jp.tree.flatten(
      r.params, is_leaf=lambda v: isinstance(v, OnlineLinear))
  site = r.sites[-1]
  assert not np.allclose(np.asarray(flat1[site].w), np.asarray(flat0[site]), atol=1e-3)
  # ... and the function is the same to 1e-5 (relative to the largest logit).
  err = qrot.check_equal(module, params, r, *args)
  assert err < 1e-5, err
  if qrot.folds(cfg):
    # folded: norms are plain, the embedding is rotated, only o/down are online
    assert all(s.endswith(("o_proj/kernel", "down_proj/kernel")) for s in r.sites)
    np.testing.assert_array_equal(np.asarray(flat1["layers_0/input_layernorm/scale"]), 1.0)
    assert not np.allclose(flat1["embed_tokens/embedding"], flat0["embed_tokens/embedding"])


@pytest.mark.parametrize("folder", [str(FIX / "llama_tiny"), str(FIX / "bert_mlm_tiny"),
                                    str(FIX / "families" / "gemma2_tiny")],
                         ids=lambda p: Path(p).name)
def test_to_stock_is_a_stock_model(folder):
  """Transforms multiplied back: plain weights, no dot=, same function."""
  module, params, _ = jp.models.from_hf(folder)
  args = _inputs(module.config, False)
  r = qrot.rotate(params, module.config, qrot.RotateConfig(mode="random", seed=1))
  stock = qrot.to_stock(r.params)
  assert not any(isinstance(v, OnlineLinear) for v in jax.tree.leaves(
      stock, is_leaf=lambda v: isinstance(v, OnlineLinear)))
  ref = module.apply({"params": params}, *args)
  got = type(module)(r.config).apply({"params": stock}, *args)
  chex.assert_trees_all_close(np.asarray(got), np.asarray(ref), atol=1e-4 * float(
      np.abs(ref).max()))


def test_rotate_refuses_quantized_leaves():
  module, params, _ = jp.models.from_hf(FIX / "llama_tiny")
  q, _ = jp.quant.quantize_tree(params, [("**/kernel", ("rtn", {"group_size": 16}))])
  with pytest.raises(ValueError, match="rotate full-precision"):
    qrot.rotate(q, module.config)
  with pytest.raises(ValueError, match="mode"):
    qrot.RotateConfig(mode="learnt")


def test_online_dot_passes_plain_and_quantized():
  w = jax.random.normal(jax.random.key(0), (24, 5))
  x = jax.random.normal(jax.random.key(1), (3, 24))
  chex.assert_trees_all_close(online_dot(x, w), x @ w, atol=1e-5)
  leaf = OnlineLinear(w=w, act_bits=8)
  y = online_dot(x, leaf)
  assert float(jnp.abs(y - x @ w).max()) < 0.05 * float(jnp.abs(x @ w).max())
