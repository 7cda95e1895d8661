"""Rotation + SmoothQuant + activation quantization end to end; SpinQuant's Cayley SGD; CLI."""

from pathlib import Path

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.quant import act_quant, smooth, spinquant
from jaxparams.quant.online import OnlineLinear, online_dot
from jaxparams.quant.outliers import OutlierConfig, quantize_outliers
from jaxparams.quant import rotated_checkpoint as rc

FIX = Path(__file__).resolve().parents[1] / "fixtures"


def test_act_quant_is_per_token_symmetric_grid():
  x = jax.random.normal(jax.random.key(0), (5, 16)) * jnp.arange(1, 6)[:, None]
  q = act_quant.quantize_activations(x, 4)
  s = np.abs(np.asarray(x)).max(-1, keepdims=True) / 7
  codes = np.asarray(q) / s
  np.testing.assert_allclose(codes, np.round(codes), atol=1e-4)
  assert np.round(codes).min() >= -8 and np.round(codes).max() <= 7
  with pytest.raises(ValueError, match="bits"):
    act_quant.quantize_activations(x, 5)


def test_cayley_step_stays_orthogonal_and_descends():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(256, 16)).astype(np.float32)
  x[:, 3] *= 30.0                       # an outlier channel
  w = rng.normal(size=(16, 8)).astype(np.float32)
  r0 = np.eye(16, dtype=np.float32)
  r, l0, l1 = spinquant.learn_rotation(x, w, r0, bits=3, group=16, act_bits=4,
                                       cfg=spinquant.LearnConfig(steps=40))
  np.testing.assert_allclose(r.T @ r, np.eye(16), atol=1e-4)
  assert l1 < 0.9 * l0, (l0, l1)   # measured 0.0632 vs 0.0748


def test_smooth_scales_formula_and_search():
  amax, wmax = np.array([10.0, 1.0, 0.1]), np.array([1.0, 2.0, 0.5])
  s = smooth.smooth_scales(amax, wmax, 0.5)
  np.testing.assert_allclose(s, np.sqrt(amax) / np.sqrt(wmax))
  x = np.random.default_rng(0).normal(size=(128, 8)).astype(np.float32)
  x[:, 0] *= 50
  ws = [np.random.default_rng(1).normal(size=(8, 4)).astype(np.float32)]
  alpha, s = smooth.search_alpha(x, ws, bits=8, group=8, act_bits=8)
  assert alpha in smooth.ALPHA_GRID and s.shape == (8,)


def _llama():
  module, params, _ = jp.models.from_hf(FIX / "llama_tiny")
  ids = jax.random.randint(jax.random.key(1), (4, 12), 1, module.config.vocab_size)
  return module, params, ids


def _nll(module, params, ids):
  logits = module.apply({"params": params}, ids).astype(jnp.float32)
  lp = jax.nn.log_softmax(logits[:, :-1], -1)
  return float(-jnp.take_along_axis(lp, ids[:, 1:, None], -1).mean())


@pytest.mark.parametrize("rotate,smooth_alpha", [("hadamard", None), (None, 0.5),
                                                 ("hadamard", 0.5)])
def test_fp_pipeline_is_exact_without_quantization(rotate, smooth_alpha):
  """8-bit weights at tiny error and no act bits: rotation/smoothing change nothing visible."""
  module, params, ids = _llama()
  res = quantize_outliers(module, params, [("**", ("rtn", {"bits": 8, "group_size": 16}))],
                          [ids], OutlierConfig(rotate=rotate, smooth=smooth_alpha))
  got = type(module)(res.config, dot=online_dot).apply({"params": res.params}, ids)
  ref = module.apply({"params": params}, ids)
  assert float(jnp.abs(got - ref).max()) < 0.02 * float(jnp.abs(ref).max())
  # weight-only: to_stock gives a stock model computing the same as the quantized one
  stock = jp.quant.rotate.to_stock(res.params)
  chex.assert_trees_all_close(type(module)(res.config).apply({"params": stock}, ids), got,
                              atol=1e-4)


def test_act_bits_and_rotation_reduce_w4a4_error():
  module, params, ids = _llama()
  rules = [("**", ("rtn", {"bits": 4, "group_size": 16}))]
  ref = _nll(module, params, ids)
  err = {}
  for rot in (None, "hadamard"):
    res = quantize_outliers(module, params, rules, [ids], OutlierConfig(rotate=rot, act_bits=4))
    leaves = jax.tree.leaves(res.params, is_leaf=lambda v: isinstance(v, OnlineLinear))
    assert sum(isinstance(v, OnlineLinear) and v.act_bits == 4 for v in leaves) == 14
    err[rot] = abs(_nll(type(module)(res.config, dot=online_dot), res.params, ids) - ref)
  assert err["hadamard"] < err[None], err


def test_learned_rotation_runs_and_logs():
  module, params, ids = _llama()
  res = quantize_outliers(module, params, [("**", ("rtn", {"bits": 3, "group_size": 16}))],
                          [ids], OutlierConfig(rotate="learned", act_bits=4,
                                               learn=spinquant.LearnConfig(steps=5)))
  logs = [v for v in res.log.values() if "learned_loss_best" in v]
  assert len(logs) == 4     # o_proj and down_proj of both blocks
  assert all(v["learned_loss_best"] <= v["learned_loss_start"] for v in logs)


def test_cli_rotate_quantize_dequantize_roundtrip(tmp_path):
  """`quantize --rotate hadamard --method gptq` then `dequantize`: stock weights, any loader."""
  from jaxparams.cli.main import main
  calib = tmp_path / "calib.txt"
  calib.write_text("\n".join(f"sample {i} of text for calibration" for i in range(8)))
  src = FIX / "bert_mlm_tiny"
  if not (src / "tokenizer.json").is_file():
    src = FIX / "llama_tiny"
  q, d = tmp_path / "q", tmp_path / "d"
  rc_ = main(["quantize", str(FIX / "llama_tiny"), str(q), "--method", "rtn", "--bits", "8",
              "--group-size", "16", "--rotate", "hadamard", "--no-progress"])
  assert rc_ == 0 and rc.is_outliers_checkpoint(q)
  assert main(["dequantize", str(q), str(d)]) == 0
  module, params, _ = jp.models.from_hf(FIX / "llama_tiny")
  m2, p2, _ = jp.models.from_hf(d)      # a stock checkpoint (rotated basis, plain norms)
  ids = jax.random.randint(jax.random.key(1), (2, 9), 1, module.config.vocab_size)
  ref = module.apply({"params": params}, ids)
  got = m2.apply({"params": p2}, ids)
  assert float(jnp.abs(got - ref).max()) < 0.02 * float(jnp.abs(ref).max())
  # the quantized folder also runs quantized through dot=online_dot
  mq, pq, _ = rc.load_outliers_checkpoint(q)
  chex.assert_trees_all_close(mq.apply({"params": pq}, ids), got, atol=1e-4)
  assert main(["quantize", str(FIX / "llama_tiny"), str(tmp_path / "q2"), "--smooth", "x",
               "--no-progress"]) != 0
  assert not (tmp_path / "q2").exists()
