"""The ``mse`` clip search of RTN/GPTQ: GPTQ ``quant.py`` ``find_params(mse=True)`` semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.quant.gptq import GPTQConfig, gptq
from jaxparams.quant.rtn import RTNConfig, rtn

W = np.asarray(jax.random.normal(jax.random.key(3), (128, 16)) ** 3)   # heavy tails


def _find_params_mse(x, bits, norm=2.4, grid=100, maxshrink=0.8):
  """numpy transcription of GPTQ quant.py find_params (asymmetric, mse=True), rows = groups."""
  maxq = 2 ** bits - 1
  xmin = np.minimum(x.min(1), 0)
  xmax = np.maximum(x.max(1), 0)
  both = (xmin == 0) & (xmax == 0)
  xmin[both], xmax[both] = -1, 1
  scale = (xmax - xmin) / maxq
  zero = np.round(-xmin / scale)
  best = np.full(x.shape[0], np.inf)
  for i in range(int(maxshrink * grid)):
    p = 1 - i / grid
    s1 = (p * xmax - p * xmin) / maxq
    z1 = np.round(-(p * xmin) / s1)
    q = np.clip(np.round(x / s1[:, None]) + z1[:, None], 0, maxq)
    err = np.sum(np.abs(s1[:, None] * (q - z1[:, None]) - x) ** norm, 1)
    tmp = err < best
    best[tmp], scale[tmp], zero[tmp] = err[tmp], s1[tmp], z1[tmp]
  return scale, zero


@pytest.mark.parametrize("bits,group", [(3, 32), (2, 64), (4, 128)])
def test_rtn_mse_matches_reference_find_params(bits, group):
  qa = rtn(W, RTNConfig(bits=bits, group_size=group, mse=2.4))
  k, n = W.shape
  rows = W.reshape(k // group, group, n).transpose(0, 2, 1).reshape(-1, group)
  s, z = _find_params_mse(rows.astype(np.float64), bits)
  np.testing.assert_allclose(np.asarray(qa.scale).reshape(-1), s, rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(qa.zero).reshape(-1), z)
  # never worse than min/max on the searched norm, strictly better somewhere on heavy tails
  e = lambda q: np.sum(np.abs(np.asarray(q.dequantize(jnp.float32)) - W) ** 2.4)
  assert e(qa) < e(rtn(W, RTNConfig(bits=bits, group_size=group)))


def test_gptq_mse_with_identity_hessian_is_rtn_mse():
  # H = I: no error feedback, so GPTQ's dynamic group grids see the original weights
  g = gptq(W, jnp.eye(128), GPTQConfig(bits=3, group_size=32, mse=2.4, damp_percent=1e-9))
  r = rtn(W, RTNConfig(bits=3, group_size=32, mse=2.4))
  np.testing.assert_allclose(np.asarray(g.scale), np.asarray(r.scale), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(g.codes), np.asarray(r.codes))
  with pytest.raises(ValueError, match="mse"):
    gptq(W, jnp.eye(128), GPTQConfig(mse=-1.0))


def test_cli_gptq_act_order_on_by_default():
  import argparse
  from jaxparams.cli import quantize as qcli
  from jaxparams.quant.rule_file import flag_fields
  assert flag_fields("gptq", 4, 32)["act_order"] is True
  assert flag_fields("gptq", 4, 32, act_order=False)["act_order"] is False
  assert "act_order" not in flag_fields("rtn", 4, 32)
  parser = argparse.ArgumentParser()
  qcli.add_parser(parser.add_subparsers())
  args = parser.parse_args(["quantize", "a", "b", "--method", "gptq", "--no-act-order"])
  assert args.act_order is False and qcli._option_fields(args) == {}
  args = parser.parse_args(["quantize", "a", "b", "--method", "gptq", "--mse", "2.4"])
  assert args.act_order is None and qcli._option_fields(args) == {"mse": 2.4}
