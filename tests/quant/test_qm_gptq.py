"""GPTQ against a torch port of the reference (fixture), error ordering and bad inputs."""

import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import importlib
from jaxparams.quant.gptq import GPTQConfig, gptq
from jaxparams.quant.rtn import RTNConfig, rtn
from jaxparams.quant.stats import gptq_hessian

FIXTURE = pathlib.Path(__file__).parents[1] / "fixtures" / "gptq_fixture.npz"
CONFIGS = {   # must mirror CONFIGS in tests/fixtures/make_gptq_fixture.py
    "b4_g32_act": dict(bits=4, group_size=32, act_order=True),
    "b4_g32": dict(bits=4, group_size=32),
    "b3_ch_sym_act": dict(bits=3, group_size=-1, symmetric=True, act_order=True),
    "b4_g64_act_static": dict(bits=4, group_size=64, act_order=True, static_groups=True),
}


@pytest.fixture(scope="module")
def fx():
  f = np.load(FIXTURE)
  x = f["x"].astype(np.float64)
  h = (2.0 / x.shape[0] * (x.T @ x)).astype(np.float32)   # as the generator: double, then f32
  return f, h


@pytest.fixture(scope="module")
def results(fx):
  f, h = fx
  return {key: gptq(jnp.asarray(f["w"]), jnp.asarray(h), GPTQConfig(**cfg), name=key)
          for key, cfg in CONFIGS.items()}


def _out_err(x, w_hat, w):
  return float(np.sum((x @ (w_hat - w)) ** 2))


@pytest.mark.parametrize("key", sorted(CONFIGS))
def test_gptq_matches_reference(fx, results, key):
  f, _ = fx
  w, x = f["w"], f["x"]
  qa = results[key]
  q = np.asarray(qa.unpacked_codes())
  q_ref = f[f"{key}/q"].astype(np.int32)
  s_ref, z_ref, g_ref = f[f"{key}/scale"], f[f"{key}/zero"], f[f"{key}/g_idx"]
  # same codes except rounding ties (allow 0.1%)
  assert np.mean(q != q_ref) <= 1e-3
  np.testing.assert_allclose(np.asarray(qa.scale), s_ref, rtol=1e-4, atol=1e-7)
  np.testing.assert_array_equal(np.asarray(qa.zero), z_ref)
  if qa.g_idx is not None:
    np.testing.assert_array_equal(np.asarray(qa.g_idx), g_ref)
  else:
    np.testing.assert_array_equal(np.arange(w.shape[0]) // qa.group_size, g_ref)
  deq_ref = (q_ref - z_ref[g_ref]) * s_ref[g_ref]
  e, e_ref = _out_err(x, np.asarray(qa.dequantize()), w), _out_err(x, deq_ref, w)
  assert abs(e - e_ref) <= 0.01 * e_ref


def test_gptq_beats_rtn_on_correlated_inputs(fx, results):
  f, _ = fx
  w, x = f["w"], f["x"]
  e_rtn = _out_err(x, np.asarray(rtn(jnp.asarray(w), RTNConfig(bits=4, group_size=32))
                                 .dequantize()), w)
  e_gptq = _out_err(x, np.asarray(results["b4_g32"].dequantize()), w)
  e_act = _out_err(x, np.asarray(results["b4_g32_act"].dequantize()), w)
  assert e_act < e_gptq < 0.7 * e_rtn, (e_act, e_gptq, e_rtn)


def test_hessian_accumulation_matches_batch():
  x = jax.random.normal(jax.random.key(0), (3, 10, 16))
  s = gptq_hessian(x[0])
  s = gptq_hessian(x[1:], prev=s)
  xf = np.asarray(x).reshape(-1, 16).astype(np.float64)
  np.testing.assert_allclose(np.asarray(s.hessian), 2 * xf.T @ xf / 30, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(s.abs_mean), np.abs(xf).mean(0), rtol=1e-5)
  assert float(s.count) == 30
  with pytest.raises(ValueError, match="features"):
    gptq_hessian(jnp.ones((4, 8)), prev=s)


def _count_eqns(jaxpr):
  total = 0
  for eqn in jaxpr.eqns:
    total += 1
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        if hasattr(sub, "jaxpr") and hasattr(sub.jaxpr, "eqns"):
          total += _count_eqns(sub.jaxpr)
        elif hasattr(sub, "eqns"):
          total += _count_eqns(sub)
  return total


def test_compiled_program_does_not_grow_with_width():
  def n_eqns(k):
    w = jax.ShapeDtypeStruct((k, 64), jnp.float32)
    h = jax.ShapeDtypeStruct((k, k), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda w, h: importlib.import_module("jaxparams.quant.gptq")._gptq_jit(
        w, h, 0.01, bits=4, group=128, sym=False, act_order=True, static_groups=False,
        per_channel=False, block=128, max_retries=4))(w, h)
    return _count_eqns(jaxpr.jaxpr)
  n_small = n_eqns(256)
  assert n_small > 50 and n_small == n_eqns(2048)


def test_bad_inputs_name_the_path():
  w = np.random.default_rng(1).normal(size=(64, 16)).astype(np.float32)
  h = np.eye(64, dtype=np.float32)
  with pytest.raises(ValueError, match="bits"):
    gptq(w, h, GPTQConfig(bits=6))
  with pytest.raises(ValueError, match="does not divide"):
    gptq(w, h, GPTQConfig(group_size=48), name="mlp/fc1/kernel")
  with pytest.raises(ValueError, match=r"\(64, 64\)"):
    gptq(w, np.eye(32, dtype=np.float32), GPTQConfig(group_size=32))
  wn = w.copy()
  wn[0, 0] = np.nan
  with pytest.raises(ValueError, match="'attn/q/kernel'.*NaN or Inf"):
    gptq(wn, h, GPTQConfig(group_size=32), name="attn/q/kernel")
  hn = h.copy()
  hn[2, 3] = np.inf
  with pytest.raises(ValueError, match="Hessian in 'attn/k/kernel'"):
    gptq(w, hn, GPTQConfig(group_size=32), name="attn/k/kernel")


def test_singular_hessian_retries_with_message():
  rng = np.random.default_rng(2)
  w = rng.normal(size=(64, 16)).astype(np.float32)
  h = np.eye(64, dtype=np.float32)
  h[5, 5] = -0.3            # not positive definite: needs ~100x the default dampening
  with warnings.catch_warnings(record=True) as rec:
    warnings.simplefilter("always")
    qa = gptq(w, h, GPTQConfig(group_size=32), name="blk/dense")
  msgs = [str(r.message) for r in rec if issubclass(r.category, RuntimeWarning)]
  assert any("'blk/dense'" in m and "retried" in m for m in msgs), msgs
  assert np.all(np.isfinite(np.asarray(qa.dequantize())))
  h[5, 5] = -1e6            # hopeless
  with pytest.raises(ValueError, match="not positive definite"):
    gptq(w, h, GPTQConfig(group_size=32), name="blk/dense")


def test_dead_inputs_are_zeroed(fx, results):
  f, _ = fx
  assert np.all(f["x"][:, 5] == 0)          # the fixture has one dead input channel
  for qa in results.values():
    np.testing.assert_array_equal(np.asarray(qa.dequantize())[5], 0.0)
