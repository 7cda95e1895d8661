"""Quantizer records carry the shared checks, defined once, and every entry runs them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams import quant
from jaxparams.quant import methods, record
from jaxparams.transform import NonFiniteError, finite


def test_every_record_has_the_shared_checks():
  for r in methods.METHODS:
    names = [c.name for c in r.checks]
    assert names[0] == "matrix" and names[-1] == "finite", (r.name, names)
    assert r.checks[-1] is finite                       # the transform layer's one definition
    assert ("bits" in names) == (r.name not in ("nf4", "fp8", "rf8")), r.name
    assert "group_size" in names, r.name


def test_public_function_record_and_tree_agree_bit_exactly():
  w = jax.random.normal(jax.random.key(0), (64, 8))
  cfg = quant.RTNConfig(bits=3, group_size=16)
  a = quant.rtn(w, cfg, name="x")
  b = methods.quantize_matrix("rtn", w, cfg, name="x")
  c = quant.quantize_tree({"x": {"kernel": w}}, [("**/kernel", ("rtn", cfg))])[0]["x"]["kernel"]
  for q in (b, c):
    np.testing.assert_array_equal(np.asarray(q.codes), np.asarray(a.codes))
    np.testing.assert_array_equal(np.asarray(q.scale), np.asarray(a.scale))


@pytest.mark.parametrize("method", ["rtn", "nf4", "fp8", "rf8", "hqq"])
def test_data_free_finite_check_is_the_record_s(method):
  w = np.ones((128, 8), np.float32)      # K = 128: every method's default group divides it
  w[3, 2] = np.inf
  with pytest.raises(NonFiniteError, match="tensor 'blk/kernel': input contains NaN or Inf"):
    methods.quantize_matrix(method, w, name="blk/kernel")
  params = {"blk": {"kernel": jnp.asarray(w)}, "ok": {"kernel": jnp.ones((128, 8))}}
  with pytest.raises(NonFiniteError, match="'blk/kernel'"):
    quant.quantize_tree(params, method)


def test_checks_run_before_the_math_and_name_the_tensor():
  with pytest.raises(ValueError, match=r"rtn: unsupported bits=5 in 'a/kernel'; supported"):
    methods.quantize_matrix("rtn", jnp.ones((64, 8)), quant.RTNConfig(bits=5), name="a/kernel")
  with pytest.raises(ValueError, match=r"expected a floating weight in 'a/kernel'"):
    methods.quantize_matrix("nf4", jnp.ones((64, 8), jnp.int32), name="a/kernel")
  with pytest.raises(ValueError, match=r"group_size=7 does not divide the input axis K=64"):
    record.group_size().static(methods.get_record("rtn").context(
        (jnp.ones((64, 8)),), quant.RTNConfig(group_size=7), "a/kernel"))
  # RTN per_tensor ignores group_size (as before): no group check.
  q = quant.rtn(jnp.ones((64, 8)), quant.RTNConfig(group_size=7, per_tensor=True))
  assert q.group_size == 64
