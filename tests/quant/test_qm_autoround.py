"""AutoRound: zero steps is RTN bit for bit, SignSGD steps as the reference, the best iterate is
returned, and the block-wise streamed result exports through the GPTQ layout decoder."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams import io as jio
from jaxparams.calib import InputStats
from jaxparams.quant import checkpoint as C
from jaxparams.quant import stream
from jaxparams.quant.autoround import (AutoRoundConfig, LearnedRounding, autoround, init_params,
                                       qdq, signround_loop)
from jaxparams.quant.gptq import GPTQConfig, gptq
from jaxparams.quant.methods import quantize_matrix
from jaxparams.quant.rtn import RTNConfig, rtn

from tests.quant.test_qp_checkpoint import _gptq_reference_dequant
from tests.quant.test_qp_stream import _tiny_hf

_Z = jax.random.normal(jax.random.key(0), (512, 64))
X = _Z + 0.8 * jnp.roll(_Z, 1, axis=1) + 0.5 * _Z[:, :1]     # correlated inputs
W = jax.random.normal(jax.random.key(1), (64, 24)) * 0.1
ST = InputStats.from_inputs(X)


def _out_err(w_hat):
  return float(jnp.sum((X @ (w_hat - W)) ** 2))


@pytest.mark.parametrize("bits,group", [(4, 32), (3, 16), (2, 64), (8, -1)])
def test_zero_steps_is_rtn_bit_for_bit(bits, group):
  q0 = autoround(W, ST, AutoRoundConfig(bits=bits, group_size=group, iters=0))
  r = rtn(W, RTNConfig(bits=bits, group_size=group))
  for a, b in zip(jax.tree_util.tree_leaves(q0), jax.tree_util.tree_leaves(r)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # and the differentiable quantizer at V=0, alpha=beta=1 is RTN's dequantized value
  g = 64 if group == -1 else group
  np.testing.assert_array_equal(np.asarray(qdq(W, init_params(W, g), bits=bits, group=g)),
                                np.asarray(r.dequantize(jnp.float32)))


def test_symmetric_zero_steps_is_gptq_grid():
  # symmetric AutoRound uses GPTQ's symmetric grid: with H = I GPTQ is RTN on that grid
  q0 = autoround(W, ST, AutoRoundConfig(bits=4, group_size=32, symmetric=True, iters=0))
  g = gptq(W, jnp.eye(64), GPTQConfig(bits=4, group_size=32, symmetric=True, damp_percent=1e-9))
  np.testing.assert_array_equal(np.asarray(q0.zero), 8.0)
  np.testing.assert_allclose(np.asarray(q0.scale), np.asarray(g.scale), rtol=1e-6)


def test_signsgd_step_linear_decay_and_best_iterate():
  # one step moves every element with a nonzero gradient by exactly lr (sign update)
  target = jnp.array([0.3, -0.2, 0.0, 1.0])
  loss = lambda p, t: jnp.sum((p["x"] - target) ** 2)
  p, losses, best = signround_loop(loss, {"x": jnp.zeros(4)}, iters=1,
                                   lrs={"x": jnp.float32(0.005)}, use_best=False)
  np.testing.assert_allclose(np.asarray(p["x"]), [0.005, -0.005, 0.0, 0.005], atol=1e-7)
  # T steps at lr (1 - t/T): total movement lr (T+1)/2
  p, losses, best = signround_loop(loss, {"x": jnp.zeros(4)}, iters=200,
                                   lrs={"x": jnp.float32(1 / 200)}, use_best=False)
  np.testing.assert_allclose(float(p["x"][3]), (1 / 200) * 201 / 2, rtol=1e-5)
  # with use_best the returned parameters are the ones that produced min(losses)
  noisy = lambda p, t: jnp.sum((p["x"] - target) ** 2) + 0.1 * jnp.sin(3.0 * t)
  pb, lb, bb = signround_loop(noisy, {"x": jnp.zeros(4)}, iters=40,
                              lrs={"x": jnp.float32(0.05)}, use_best=True)
  t_best = int(jnp.argmin(lb))
  assert float(bb) == float(lb.min())
  np.testing.assert_allclose(float(noisy(pb, t_best)), float(lb.min()), rtol=1e-6)


def test_layerwise_loss_best_checkpoint_below_rtn():
  cfg = AutoRoundConfig(bits=3, group_size=32, iters=60)
  import importlib
  A = importlib.import_module("jaxparams.quant.autoround")   # the package exports the function
  g = 32
  p, losses, best = A._layerwise(W, ST.gram, init_params(W, g),
                                 A._lrs({"w": None}, cfg, True), bits=3, group=g, sym=False,
                                 iters=60, use_best=True)
  losses = np.asarray(losses)
  assert float(best) == losses.min() and losses.min() < losses[0]
  # the exported codes reproduce the best loss (the loss of the returned parameters)
  qa = autoround(W, ST, cfg)
  d = qa.dequantize(jnp.float32) - W
  np.testing.assert_allclose(float(jnp.sum(d * (ST.gram @ d)) / d.shape[1]), float(best),
                             rtol=1e-4)
  assert _out_err(qa.dequantize()) < 0.92 * _out_err(rtn(W, RTNConfig(bits=3,
                                                                   group_size=32)).dequantize())
  # rounding offsets stay within the reference's bound lr (T+1)/2
  lr = 1 / 60
  assert float(jnp.abs(p["v"]).max()) <= lr * 61 / 2 + 1e-6


def test_registered_and_learned_parameters_export():
  qa = quantize_matrix("autoround", W, AutoRoundConfig(bits=4, group_size=32, iters=0), ST)
  assert qa.bits == 4
  p = init_params(W, 32)
  p["v"] = p["v"].at[0, 0].set(0.49)
  lr = LearnedRounding(xtx=ST.xtx, abs_sum=ST.abs_sum, count=ST.count, **p)
  q1 = autoround(W, lr, AutoRoundConfig(bits=4, group_size=32))
  np.testing.assert_array_equal(np.asarray(q1.dequantize(jnp.float32)),
                                np.asarray(qdq(W, p, bits=4, group=32)))
  with pytest.raises(ValueError, match="expected"):
    autoround(W, LearnedRounding(xtx=ST.xtx, abs_sum=ST.abs_sum, count=ST.count,
                                 v=jnp.zeros((3, 3)), alpha=p["alpha"], beta=p["beta"]),
              AutoRoundConfig(group_size=32))
  with pytest.raises(ValueError, match="iters"):
    autoround(W, ST, AutoRoundConfig(iters=-1))


@pytest.mark.slow
def test_streamed_blockwise_autoround_lowers_block_error_and_exports_gptq(tmp_path, caplog):
  _, texts, _ = _tiny_hf(tmp_path, layers=1)
  rules = [("**", ("autoround", {"bits": 4, "group_size": 16, "iters": 8, "batch_size": 4}))]
  zero = [("**", ("autoround", {"bits": 4, "group_size": 16, "iters": 0}))]
  kw = dict(calibration=texts, batch_size=4, max_length=16)
  import logging
  # The block loop logs from quant.block_calibration (quant/stream.py's split).
  with caplog.at_level(logging.INFO, logger="jaxparams.quant.block_calibration"):
    stream.quantize_checkpoint(tmp_path / "src", tmp_path / "q", rules, **kw)
  msg = [r.getMessage() for r in caplog.records if "autoround layers_0" in r.getMessage()]
  first, best = (float(v) for v in msg[0].split("loss ")[1].split(" -> best "))
  assert best <= first
  stream.quantize_checkpoint(tmp_path / "src", tmp_path / "g", rules, fmt="gptq", **kw)
  stream.quantize_checkpoint(tmp_path / "src", tmp_path / "z", zero, **kw)
  stream.quantize_checkpoint(tmp_path / "src", tmp_path / "r",
                             [("**", ("rtn", {"bits": 4, "group_size": 16}))])
  ours, _ = C.load_quantized_flat(tmp_path / "q")
  z, _ = C.load_quantized_flat(tmp_path / "z")
  r, _ = C.load_quantized_flat(tmp_path / "r")
  t = jio.load_safetensors(tmp_path / "g")
  cfg = __import__("json").loads((tmp_path / "g" / "quantize_config.json").read_text())
  names = [n for n in ours if C.is_quant(ours[n])]
  assert len(names) == 7
  changed = 0
  for n in names:
    np.testing.assert_array_equal(np.asarray(z[n].codes), np.asarray(r[n].codes))  # 0 steps
    changed += int(not np.array_equal(np.asarray(ours[n].codes), np.asarray(r[n].codes)))
    prefix = n[:-len(".weight")]
    k = ours[n].shape[0]
    ref = _gptq_reference_dequant(t, prefix, 4, k, cfg.get("checkpoint_format", "gptq"))
    want = np.asarray(ours[n].dequantize(jnp.float32), np.float64)
    np.testing.assert_allclose(ref, want, rtol=2e-3, atol=2e-3 * np.abs(want).max())
  assert changed == 7                      # the learned rounding moved codes in every layer


@pytest.mark.slow
def test_cli_autoround_zero_iters_is_rtn(tmp_path):
  from tests.quant.test_qp_stream import _cli
  _tiny_hf(tmp_path, layers=1)
  common = ["--bits", "4", "--group-size", "16", "--no-progress"]
  _cli(["quantize", str(tmp_path / "src"), str(tmp_path / "a"), "--method", "autoround",
        "--iters", "0", "--calibration", str(tmp_path / "calib.txt"), "--max-length", "16"]
       + common)
  _cli(["quantize", str(tmp_path / "src"), str(tmp_path / "r"), "--method", "rtn"] + common)
  a, _ = C.load_quantized_flat(tmp_path / "a")
  r, _ = C.load_quantized_flat(tmp_path / "r")
  assert sum(C.is_quant(v) for v in a.values()) == 7
  for n, v in a.items():
    if C.is_quant(v):
      np.testing.assert_array_equal(np.asarray(v.codes), np.asarray(r[n].codes))
  with pytest.raises(ValueError, match="--iters does not apply to --method rtn"):
    _cli(["quantize", str(tmp_path / "src"), str(tmp_path / "x"), "--method", "rtn",
          "--iters", "3"] + common)


def test_block_inputs_of_one_sample_batches_are_all_kept():
  """Batches of one calibration sample each: every sample's hidden states reach AutoRound.

  (A leading-1 leaf used to be taken as broadcast and only the first sample was kept.)
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from jaxparams.quant.stream import _stack  # pylint: disable=import-outside-toplevel
  hs = [jnp.full((1, 3, 2), float(i)) for i in range(4)]
  pos = jnp.arange(3)[None]
  out_args, out_kw = _stack([((h,), {"pos": pos}) for h in hs])
  assert out_args[0].shape == (4, 3, 2)
  assert [float(v) for v in out_args[0][:, 0, 0]] == [0.0, 1.0, 2.0, 3.0]
  assert out_kw["pos"].shape in ((1, 3), (4, 3))
  # Batches of two samples share a leading-1 leaf and concatenate the hidden states.
  hs2 = [jnp.full((2, 3, 2), float(i)) for i in range(3)]
  out_args, out_kw = _stack([((h,), {"pos": pos}) for h in hs2])
  assert out_args[0].shape == (6, 3, 2) and out_kw["pos"].shape == (1, 3)
