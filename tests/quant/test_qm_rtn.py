"""RTN, NF4 and FP8 against independent NumPy transcriptions and exact constants."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from jaxparams.quant.fp8 import FP8Config, fp8
from jaxparams.quant.nf4 import NF4Config, nf4
from jaxparams.quant.qarray import NF4_CODEBOOK
from jaxparams.quant.rtn import RTNConfig, rtn

W = np.random.default_rng(0).normal(size=(64, 24)).astype(np.float32)
W[:16, 0] = 0.0                       # an all-zero group
W[:, 1] = np.abs(W[:, 1])             # an all-positive column


def _np_rtn(w, bits, g, sym, per_tensor=False):
  """Textbook RTN, written with loops over groups and columns."""
  k, n = w.shape
  out = np.zeros_like(w)
  maxq = 2 ** bits - 1
  for c in range(n):
    for g0 in range(0, k, g):
      seg = w[:, :] if per_tensor else w[g0:g0 + g, c]
      if sym:
        amax = np.abs(seg).max()
        scale = amax / (2 ** (bits - 1) - 1) if amax > 0 else 1.0
        zero = 2 ** (bits - 1)
      else:
        lo, hi = min(seg.min(), 0.0), max(seg.max(), 0.0)
        if lo == 0 and hi == 0:
          lo, hi = -1.0, 1.0
        scale = (hi - lo) / maxq
        zero = np.round(-lo / scale)
      q = np.clip(np.round(w[g0:g0 + g, c] / np.float32(scale)) + zero, 0, maxq)
      out[g0:g0 + g, c] = (q - zero) * np.float32(scale)
  return out


@pytest.mark.parametrize("bits,g,sym", [(4, 16, False), (4, 16, True), (2, 32, False),
                                        (3, 64, False), (8, 64, True)])
def test_rtn_matches_numpy(bits, g, sym):
  cfg = RTNConfig(bits=bits, group_size=g if g < 64 else -1, symmetric=sym)
  qa = rtn(jnp.asarray(W), cfg)
  ref = _np_rtn(W, bits, g, sym)
  np.testing.assert_allclose(np.asarray(qa.dequantize()), ref, rtol=1e-6, atol=1e-6)
  q = np.asarray(qa.unpacked_codes())
  assert q.min() >= 0 and q.max() <= 2 ** bits - 1


def test_rtn_per_tensor():
  qa = rtn(jnp.asarray(W), RTNConfig(bits=4, per_tensor=True, symmetric=True))
  assert qa.scale.shape == (1, 24) and np.unique(np.asarray(qa.scale)).size == 1
  np.testing.assert_allclose(np.asarray(qa.dequantize()), _np_rtn(W, 4, 64, True, True), atol=1e-6)


def test_rtn_int8_is_close():
  qa = rtn(jnp.asarray(W), RTNConfig(bits=8, group_size=-1, symmetric=True))
  err = np.abs(np.asarray(qa.dequantize()) - W).max(0)
  assert np.all(err <= np.abs(W).max(0) / 127 / 2 + 1e-6)


@pytest.mark.parametrize("bad", [dict(bits=5), dict(bits=1), dict(group_size=24),
                                 dict(group_size=-7)])
def test_rtn_bad_config(bad):
  with pytest.raises(ValueError, match="bits|group_size"):
    rtn(jnp.asarray(W), RTNConfig(**bad), name="layers/0/kernel")


def test_rtn_nan_names_path():
  w = W.copy()
  w[3, 4] = np.nan
  # The record's fused finite check (jaxparams.transform.finite) names the tensor.
  with pytest.raises(ValueError, match="encoder/dense/kernel.*NaN or Inf"):
    rtn(jnp.asarray(w), RTNConfig(group_size=32), name="encoder/dense/kernel")
  with pytest.raises(ValueError, match="matrix"):
    rtn(jnp.ones((8,)), RTNConfig())


def test_nf4_codebook_is_qlora():
  # QLoRA create_normal_map(offset=0.9677083, use_extra_value=True), rebuilt from normal quantiles.
  from scipy import stats  # scipy comes with scikit-learn (test extra)
  offset = 0.9677083
  v1 = stats.norm.ppf(np.linspace(offset, 0.5, 9)[:-1])
  v3 = -stats.norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
  v = np.sort(np.concatenate([v1, [0.0], v3]))
  v = v / np.abs(v).max()
  np.testing.assert_allclose(np.array(NF4_CODEBOOK), v, atol=2e-7)
  assert NF4_CODEBOOK[7] == 0.0 and NF4_CODEBOOK[0] == -1.0 and NF4_CODEBOOK[15] == 1.0


def test_nf4_nearest_level():
  qa = nf4(jnp.asarray(W), NF4Config(block_size=16))
  assert qa.kind == "nf4" and qa.zero is None and qa.scale.shape == (4, 24)
  book = np.array(NF4_CODEBOOK)
  wb = W.reshape(4, 16, 24)
  amax = np.abs(wb).max(1, keepdims=True)
  amax[amax == 0] = 1.0
  idx = np.abs((wb / amax)[..., None] - book).argmin(-1)
  ref = (book[idx] * amax).reshape(64, 24)
  np.testing.assert_allclose(np.asarray(qa.dequantize()), ref, rtol=1e-6, atol=1e-7)
  assert qa.codes.shape == (8, 24)                         # packed 8 codes per word


@pytest.mark.parametrize("fmt,np_dtype,fmax", [("e4m3", ml_dtypes.float8_e4m3fn, 448.0),
                                              ("e5m2", ml_dtypes.float8_e5m2, 57344.0)])
def test_fp8_cast(fmt, np_dtype, fmax):
  qa = fp8(jnp.asarray(W), FP8Config(fmt=fmt))
  amax = np.abs(W).max(0, keepdims=True)
  scale = np.where(amax > 0, amax / fmax, 1.0).astype(np.float32)
  ref = (W / scale).astype(np_dtype).astype(np.float32) * scale
  np.testing.assert_allclose(np.asarray(qa.dequantize()), ref, rtol=1e-6)
  assert qa.kind == f"fp8_{fmt}" and qa.codes.dtype == np_dtype
  with pytest.raises(ValueError, match="fmt"):
    fp8(jnp.asarray(W), FP8Config(fmt="e3m4"))
