"""Generalized-Gaussian fits and initialisation, RF8 rounding (reference checks; codes: test_prune_rf8_format)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.prune import gg, rf8


@pytest.mark.parametrize("nu", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("method", ["moments", "mle"])
def test_fit_recovers_shape(nu, method):
  x = gg.gg_sample(jax.random.key(int(nu * 10)), (1_000_000,), nu=nu, beta=0.3)
  nu_hat, beta_hat = gg.fit_gg(x, method=method)
  assert abs(nu_hat - nu) <= 0.05
  assert beta_hat == pytest.approx(0.3, rel=0.05)


def test_ratio_and_moments_table_values():
  assert float(gg.gg_ratio(2.0)) == pytest.approx(math.pi / 2, rel=1e-5)
  with pytest.raises(ValueError, match="NaN"):
    gg.fit_gg(np.array([1.0, np.nan]))
  with pytest.raises(ValueError, match="method"):
    gg.fit_gg(np.ones(4), method="median")


@pytest.mark.parametrize("nu", [0.5, 1.0, 2.0])
def test_gg_init_variance_is_xi_over_n(nu):
  # reference: nu=1, xi=2, n_dim=4096 -> alpha = 0.015625 and std = sqrt(2/4096) = 0.0221
  w = gg.gg_init(nu=nu, xi=2.0)(jax.random.key(0), (256, 4096))
  assert float(w.std()) == pytest.approx(math.sqrt(2 / 4096), rel=0.02)
  alpha = math.sqrt(2 / 4096 * math.exp(math.lgamma(1) - math.lgamma(3)))
  assert alpha == pytest.approx(0.015625)


def test_rf8_reference_values_and_two_binary_digits():
  got = rf8.rf8_round(jnp.array([0.3, 0.7, 0.9, -0.1234, 1.0, 0.0]))
  assert got.tolist() == [0.3125, 0.75, 0.875, -0.125, 1.0, 0.0]
  x = np.asarray(rf8.rf8_round(jax.random.normal(jax.random.key(0), (20000,))))
  x = np.abs(x[x != 0]).astype(np.float64)
  d1 = 2.0 ** np.round(np.log2(x))          # at most two signed powers of two: x = d1 +- d2
  r = np.abs(x - d1)
  assert np.all((r == 0) | (2.0 ** np.round(np.log2(np.where(r > 0, r, 1))) == r))
  assert np.all((r == 0) | (np.log2(d1) - np.log2(np.where(r > 0, r, 1)) <= 4))


@pytest.mark.parametrize("nu", [0.5, 1.0])
def test_gg_reinit_keeps_each_leafs_variance(nu):
  p = {"emb": jax.random.normal(jax.random.key(0), (512, 64)),
       "dense": {"kernel": jax.random.normal(jax.random.key(1), (64, 512)) * 0.05,
                 "bias": jnp.full((512,), 0.5)}}
  q = gg.gg_reinit(p, jax.random.key(2), nu=nu)
  for k in (("emb",), ("dense", "kernel")):
    a, b = p, q
    for part in k:
      a, b = a[part], b[part]
    assert float(b.std()) == pytest.approx(float(a.std()), rel=0.03)
    assert gg.fit_gg(b)[0] == pytest.approx(nu, abs=0.08)
  np.testing.assert_array_equal(q["dense"]["bias"], p["dense"]["bias"])
  with pytest.raises(ValueError, match="nu > 0"):
    gg.gg_reinit(p, jax.random.key(0), nu=0.0)
