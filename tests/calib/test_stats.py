"""InputStats: one convention, streamed == one-shot, masks, merging, sharding, files."""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxparams.calib import InputStats, accumulate, as_hessian


def _x(shape=(6, 10, 12), seed=0):
  return np.asarray(jax.random.normal(jax.random.key(seed), shape), np.float32) * \
      np.linspace(0.1, 3.0, shape[-1], dtype=np.float32)


def test_streamed_equals_one_shot_xtx():
  x = _x()
  s = InputStats.from_inputs(x[0])
  for b in range(1, 6):
    s = s.update(x[b])
  xf = x.reshape(-1, 12).astype(np.float64)
  n = xf.shape[0]
  np.testing.assert_allclose(np.asarray(s.xtx), xf.T @ xf, rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(s.abs_sum), np.abs(xf).sum(0), rtol=1e-5)
  assert s.n == n
  # The derived views: GPTQ's H = 2 X^T X / n, X^T X / n, AWQ's mean |x|.
  np.testing.assert_allclose(np.asarray(s.hessian), 2 * xf.T @ xf / n, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(s.gram), xf.T @ xf / n, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(s.abs_mean), np.abs(xf).mean(0), rtol=1e-5)
  # The same, one shot; and batches merge by addition in any order.
  one = InputStats.from_inputs(x)
  np.testing.assert_allclose(np.asarray(one.xtx), np.asarray(s.xtx), rtol=1e-5, atol=1e-4)
  merged = InputStats.from_inputs(x[3:]) + InputStats.from_inputs(x[:3])
  np.testing.assert_allclose(np.asarray(merged.xtx), np.asarray(s.xtx), rtol=1e-5, atol=1e-4)
  assert merged.n == n


def test_token_mask_drops_rows():
  x = _x((3, 7, 5))
  mask = np.ones((3, 7), np.int32)
  mask[0, 4:] = 0
  mask[2, 1:] = 0
  s = InputStats.from_inputs(x, mask=mask)
  rows = x[mask.astype(bool)].astype(np.float64)
  assert s.n == rows.shape[0] == 12
  np.testing.assert_allclose(np.asarray(s.xtx), rows.T @ rows, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(np.asarray(s.abs_mean), np.abs(rows).mean(0), rtol=1e-5)
  with pytest.raises(ValueError, match="mask"):
    InputStats.from_inputs(x, mask=mask[:, :3])


def test_accumulate_is_traceable_in_scan():
  x = _x((4, 8, 6))

  def step(s, xb):
    return accumulate(s, xb), None

  s, _ = jax.jit(lambda xs: jax.lax.scan(step, InputStats.zeros(6), xs))(x)
  xf = x.reshape(-1, 6).astype(np.float64)
  np.testing.assert_allclose(np.asarray(s.xtx), xf.T @ xf, rtol=1e-5, atol=1e-5)
  assert float(s.count) == 32


def test_sharded_over_eight_devices_equals_unsharded():
  devs = np.array(jax.devices()[:8])
  assert devs.size == 8
  mesh = Mesh(devs, ("data",))
  x = _x((64, 16), seed=3)
  mask = (np.arange(64) % 5 != 0).astype(np.float32)
  want = InputStats.from_inputs(x, mask=mask)

  # (1) explicit: per-shard sums, then psum over the mesh axis.
  def shard(xs, ms):
    return accumulate(None, xs, ms).psum("data")

  f = jax.shard_map(shard, mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P())
  got = jax.jit(f)(x, mask)
  np.testing.assert_allclose(np.asarray(got.xtx), np.asarray(want.xtx), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(got.abs_sum), np.asarray(want.abs_sum), rtol=1e-5)
  assert float(got.count) == float(want.count) == float(mask.sum())
  # (2) implicit: jit over row-sharded inputs gives the same statistics.
  xs = jax.device_put(x, NamedSharding(mesh, P("data")))
  got2 = jax.jit(accumulate)(None, xs, jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(got2.xtx), np.asarray(want.xtx), rtol=1e-5, atol=1e-4)


def test_save_load_round_trip(tmp_path):
  s = InputStats.from_inputs(_x((5, 4)))
  s.save(tmp_path / "sub" / "stats.npz")
  t = InputStats.load(tmp_path / "sub" / "stats.npz")
  for a, b in ((s.xtx, t.xtx), (s.abs_sum, t.abs_sum), (s.count, t.count)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert list((tmp_path / "sub").iterdir()) == [tmp_path / "sub" / "stats.npz"]
  with pytest.raises(FileNotFoundError):
    InputStats.load(tmp_path / "missing.npz")
  np.savez(tmp_path / "bad.npz", xtx=np.zeros((2, 2)))
  with pytest.raises(ValueError, match="missing"):
    InputStats.load(tmp_path / "bad.npz")


def test_errors_name_the_layer():
  with pytest.raises(ValueError, match="'l/kernel'.*at least one row"):
    InputStats.from_inputs(np.ones(4, np.float32), name="l/kernel")
  with pytest.raises(ValueError, match="floating"):
    InputStats.from_inputs(np.ones((2, 4), np.int32), name="l/kernel")
  s = InputStats.from_inputs(np.ones((2, 4), np.float32))
  with pytest.raises(ValueError, match="3 features, earlier batches had 4"):
    s.update(np.ones((2, 3), np.float32))
  with pytest.raises(ValueError, match="NaN"):
    s.update(np.full((2, 4), np.nan, np.float32))
  with pytest.raises(ValueError, match="K=4 input features, but the weight has K=5"):
    s.check(5, name="w")
  with pytest.raises(ValueError, match="empty"):
    InputStats.zeros(4).check(4)
  with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
    as_hessian(s, k=3)
  with pytest.raises(ValueError, match="merge"):
    _ = s + InputStats.zeros(3)


def test_old_names_are_deprecated_aliases_of_one_convention():
  import jaxparams.quant as jq
  from jaxparams.quant import calibrate, stats as qstats
  x = _x((20, 6))
  with pytest.warns(DeprecationWarning, match="InputStats"):
    layer_stats = calibrate.LayerStats
  with pytest.warns(DeprecationWarning, match="InputStats"):
    act_stats = jq.ActStats
  assert layer_stats is act_stats is InputStats
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    s = qstats.gptq_hessian(x[:7])
    s = qstats.gptq_hessian(x[7:], prev=s)
    xf = x.astype(np.float64)
    # Old LayerStats.hessian_matrix() was X^T X / n; old ActStats.hessian 2 X^T X / n.
    np.testing.assert_allclose(np.asarray(s.hessian_matrix()), xf.T @ xf / 20, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.hessian), 2 * xf.T @ xf / 20, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(s.mean_abs()), np.abs(xf).mean(0), rtol=1e-5)
