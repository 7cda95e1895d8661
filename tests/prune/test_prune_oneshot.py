"""One-shot pruning against the papers' equations and a numpy transcription of SparseGPT."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.prune import masks, wanda
from jaxparams.prune.obs_pruning import SparseGPTConfig
from jaxparams.prune.obs_pruning import sparsegpt as run_sparsegpt


def _np_sparsegpt(w_t, h, sparsity, prunen=0, prunem=0, blocksize=128, percdamp=0.01, bits=None):
  """Independent float64 transcription of the reference fasterprune (rows = outputs)."""
  w = w_t.astype(np.float64).copy()
  h = h.astype(np.float64).copy()
  rows, cols = w.shape
  dead = np.diag(h) == 0
  h[dead, dead] = 1
  w[:, dead] = 0
  if bits is not None:
    maxq = 2 ** bits - 1
    xmin = np.minimum(w.min(1), 0)
    xmax = np.maximum(w.max(1), 0)
    scale = (xmax - xmin) / maxq
    zero = np.round(-xmin / scale)
  h = h + percdamp * np.mean(np.diag(h)) * np.eye(cols)
  hinv = np.linalg.inv(h)
  u = np.linalg.cholesky(hinv).T          # upper, hinv = U^T U
  losses = np.zeros(rows)
  for i1 in range(0, cols, blocksize):
    i2 = min(i1 + blocksize, cols)
    w1 = w[:, i1:i2].copy()
    q1 = np.zeros_like(w1)
    e1 = np.zeros_like(w1)
    u1 = u[i1:i2, i1:i2]
    if prunen == 0:
      tmp = w1 ** 2 / np.diag(u1)[None, :] ** 2
      thresh = np.sort(tmp.ravel())[int(tmp.size * sparsity)]
      mask1 = tmp <= thresh
    else:
      mask1 = np.zeros_like(w1, dtype=bool)
    for i in range(i2 - i1):
      col = w1[:, i]
      d = u1[i, i]
      if prunen != 0 and i % prunem == 0:
        tmp = w1[:, i:i + prunem] ** 2 / np.diag(u1)[i:i + prunem][None, :] ** 2
        idx = np.argsort(tmp, axis=1, kind="stable")[:, :prunen]
        for r in range(rows):
          mask1[r, i + idx[r]] = True
      q = col.copy()
      q[mask1[:, i]] = 0
      if bits is not None:
        q = scale * (np.clip(np.round(q / scale) + zero, 0, maxq) - zero)
        q[mask1[:, i]] = 0
      q1[:, i] = q
      losses += (col - q) ** 2 / d ** 2 / 2
      err = (col - q) / d
      w1[:, i:] -= np.outer(err, u1[i, i:])
      e1[:, i] = err
    w[:, i1:i2] = q1
    w[:, i2:] -= e1 @ u[i1:i2, i2:]
  return w, losses.sum()


def _layer(seed, d_in=32, d_out=12, n=256):
  rng = np.random.default_rng(seed)
  mix = rng.normal(size=(d_in, d_in)) * 0.3 + np.eye(d_in)
  x = rng.normal(size=(n, d_in)) @ mix                      # correlated inputs
  w = rng.normal(size=(d_in, d_out)).astype(np.float32)
  return x.astype(np.float32), w


@pytest.mark.parametrize("kw", [dict(sparsity=0.5), dict(sparsity=0.3, block_size=8),
                                dict(pattern=(2, 4), block_size=16), dict(sparsity=0.5, bits=4)])
def test_sparsegpt_matches_numpy_transcription(kw):
  x, w = _layer(0)
  h = 2 * x.T @ x / x.shape[0]
  wp, loss = run_sparsegpt(jnp.asarray(w), jnp.asarray(h), **kw)
  n, m = kw.get("pattern", (0, 0))
  ref, ref_loss = _np_sparsegpt(w.T, h, kw.get("sparsity", 0.5), n, m, kw.get("block_size", 128),
                                bits=kw.get("bits"))
  np.testing.assert_allclose(np.asarray(wp), ref.T, atol=2e-4, rtol=1e-3)
  assert (np.asarray(wp) == 0).tolist() == (ref.T == 0).tolist()
  np.testing.assert_allclose(float(loss), ref_loss, rtol=1e-3)


def test_sparsegpt_density_one_and_zero_sparsity_keep_weights():
  x, w = _layer(1)
  h = x.T @ x
  wp, loss = run_sparsegpt(jnp.asarray(w), jnp.asarray(h), sparsity=0.0)
  assert np.asarray(wp).tolist() == w.tolist()     # bit-exact
  assert float(loss) == 0.0


def test_sparsegpt_beats_magnitude_and_is_scale_invariant():
  x, w = _layer(2)
  h = x.T @ x
  wp, _ = run_sparsegpt(jnp.asarray(w), jnp.asarray(h), sparsity=0.5, block_size=16)
  wm = np.where(np.asarray(masks.magnitude_mask(jnp.asarray(w), 0.5)), w, 0)
  err_sgpt = np.linalg.norm(x @ (w - np.asarray(wp)))
  err_mag = np.linalg.norm(x @ (w - wm))
  assert err_sgpt < 0.9 * err_mag
  wp2, _ = run_sparsegpt(jnp.asarray(w), jnp.asarray(9.0 * h), sparsity=0.5, block_size=16)
  chex.assert_trees_all_close(wp2, wp, atol=1e-5)
  # every 16-column block (of the torch orientation) has at least floor(0.5 * rows * 16) zeros
  for i in range(0, 32, 16):
    assert int((np.asarray(wp)[i:i + 16] == 0).sum()) >= 0.5 * 12 * 16


def test_sparsegpt_two_four_structure_and_dead_inputs():
  x, w = _layer(3)
  x[:, 5] = 0.0
  h = x.T @ x
  wp, _ = run_sparsegpt(jnp.asarray(w), jnp.asarray(h), pattern=(2, 4), block_size=8)
  nz = (np.asarray(wp) != 0).reshape(8, 4, 12).sum(axis=1)
  assert (nz <= 2).all()
  assert (np.asarray(wp)[5] == 0).all()


def test_sparsegpt_joint_quantization_on_grid():
  x, w = _layer(4)
  wp, _ = run_sparsegpt(jnp.asarray(w), jnp.asarray(x.T @ x), sparsity=0.5, bits=3)
  wt = w.T
  xmin, xmax = np.minimum(wt.min(1), 0), np.maximum(wt.max(1), 0)
  scale = (xmax - xmin) / 7
  zero = np.round(-xmin / scale)
  k = np.asarray(wp).T / scale[:, None] + zero[:, None]
  np.testing.assert_allclose(k, np.round(k), atol=1e-3)


def test_sparsegpt_config_errors():
  with pytest.raises(ValueError, match="sparsity"):
    SparseGPTConfig(sparsity=1.5)
  with pytest.raises(ValueError, match="multiple of M"):
    SparseGPTConfig(pattern=(2, 4), block_size=6)
  with pytest.raises(ValueError, match="Hessian"):
    run_sparsegpt(jnp.ones((4, 2)), jnp.eye(3))


def test_wanda_equation_and_counts():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(64, 10)).astype(np.float32)
  x = rng.normal(size=(50, 64)).astype(np.float32) * rng.uniform(0.1, 5, size=64)
  x_sq = (x ** 2).sum(0)
  m = np.asarray(wanda.wanda_mask(jnp.asarray(w), jnp.asarray(x_sq), sparsity=0.5))
  score = np.abs(w) * np.linalg.norm(x, axis=0)[:, None]
  for j in range(10):
    order = np.argsort(score[:, j], kind="stable")
    expect = np.ones(64, bool)
    expect[order[:32]] = False
    assert m[:, j].tolist() == expect.tolist()
  assert ((~m).sum(axis=0) == 32).all()
  # invariant to scaling the activations; equal norms -> per-row magnitude pruning
  m2 = wanda.wanda_mask(jnp.asarray(w), jnp.asarray(7.0 * x_sq), sparsity=0.5)
  assert np.asarray(m2).tolist() == m.tolist()
  m3 = wanda.wanda_mask(jnp.asarray(w), jnp.ones(64), sparsity=0.5)
  assert np.asarray(m3).tolist() == np.asarray(masks.row_mask(jnp.abs(jnp.asarray(w)), 0.5)).tolist()


def test_nm_mask_every_group():
  s = jax.random.uniform(jax.random.key(0), (64, 16))
  for n, m in [(2, 4), (4, 8), (1, 4)]:
    keep = np.asarray(masks.nm_mask(s, n, m))
    assert (keep.reshape(64 // m, m, 16).sum(1) == m - n).all()
  with pytest.raises(ValueError, match="multiple of 4"):
    masks.nm_mask(jnp.ones((6, 2)), 2, 4)


@pytest.mark.parametrize("sparsity", [0.0, 0.13, 0.5, 0.9, 0.999])
def test_magnitude_and_global_exact_counts(sparsity):
  w = jax.random.normal(jax.random.key(1), (37, 11))
  keep = masks.magnitude_mask(w, sparsity)
  assert abs(1 - float(keep.mean()) - sparsity) <= 1 / w.size
  g = masks.global_masks({"a": w, "b": jnp.abs(w[:5]) * 10}, sparsity)
  total = w.size + w[:5].size
  assert int(sum((~v).sum() for v in g.values())) == math.floor(total * sparsity)


def test_sparse24_layout_round_trip_exact():
  from jaxparams.prune import sparse24
  w = jax.random.normal(jax.random.key(5), (16, 64))
  keep = masks.nm_mask(jnp.abs(w).T, 2, 4).T            # 2:4 along the last axis
  w24 = jnp.where(keep, w, 0.0)
  values, meta = sparse24.compress_24(w24)
  assert values.shape == (16, 32) and meta.shape == (16, 16) and meta.dtype == jnp.uint8
  assert np.asarray(sparse24.decompress_24(values, meta)).tobytes() == np.asarray(w24).tobytes()
  sparser = w24.at[:, :4].set(0.0)                       # groups with fewer than 2 survivors
  np.testing.assert_array_equal(sparse24.decompress_24(*sparse24.compress_24(sparser)), sparser)
  with pytest.raises(ValueError, match="more than 2"):
    sparse24.compress_24(w)
