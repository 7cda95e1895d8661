"""Closed-form updates: exact properties and parity with a numpy transcription of the references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.edit import methods, solve
from tests.edit import reference_numpy as ref


def _problem(seed=0, d_k=48, d_v=24, rank=32, n0=400, n=6, full_rank=True):
  rng = np.random.default_rng(seed)
  basis = rng.normal(size=(d_k, rank))
  k0 = basis @ rng.normal(size=(rank, n0))            # preserved keys span a rank-32 subspace
  cov = (k0 @ k0.T) / n0
  if full_rank:
    cov = cov + 0.1 * np.eye(d_k)
  w = rng.normal(size=(d_k, d_v)) / np.sqrt(d_k)      # our layout [d_k, d_v]
  keys = rng.normal(size=(d_k, n))
  resid = rng.normal(size=(d_v, n))
  return w.astype(np.float32), cov.astype(np.float32), k0, keys.astype(np.float32), \
      resid.astype(np.float32)


def _rel(a, b):
  return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


def test_rome_exact_and_matches_reference():
  w, cov, _, keys, _ = _problem()
  rng = np.random.default_rng(1)
  k_avg, k_star = keys[:, 0], keys[:, 0] + 0.1 * keys[:, 1]
  v_star = rng.normal(size=w.shape[1]).astype(np.float32)
  d = solve.rome_delta(jnp.asarray(w), jnp.asarray(cov), jnp.asarray(k_avg), jnp.asarray(k_star),
                       jnp.asarray(v_star))
  w_new = np.asarray(w + d, np.float64)
  assert np.linalg.norm(w_new.T @ k_star - v_star) / np.linalg.norm(v_star) <= 1e-5
  want = ref.rome_update(w.T.astype(np.float64), cov.astype(np.float64), k_avg.astype(np.float64),
                         k_star.astype(np.float64), v_star.astype(np.float64))
  # float32 against float64: C0 here has condition number 1.4e3, so the solve's error is about
  # cond * eps32 = 1.7e-4 at worst (1.18e-5 seen on an AMD EPYC, 8e-6 elsewhere); the float32
  # tolerance of test_memit_matches_reference. A wrong formula is off by O(1).
  assert _rel(np.asarray(d).T, want) <= 1e-4


@pytest.mark.parametrize("x64, tol", [(True, 1e-5), (False, 1e-4)])
def test_memit_matches_reference(x64, tol):
  """The reference solves in float64: so do we under x64 (<= 1e-5); fp32 solve <= 1e-4."""
  w, cov, _, keys, resid = _problem()
  for lam, left in ((15000.0, 3), (1.0, 1)):
    with jax.enable_x64(x64):
      d = solve.memit_delta(jnp.asarray(keys), jnp.asarray(resid / left), jnp.asarray(cov), lam)
    want = ref.memit_update(keys.astype(np.float64), resid.astype(np.float64),
                            cov.astype(np.float64), lam, left)
    assert _rel(np.asarray(d).T, want) <= tol, lam


def test_memit_fits_edits_when_lambda_small():
  """lam -> 0 with independent keys: (W + D)^T K = W^T K + R (the edits are written exactly)."""
  w, cov, _, keys, resid = _problem(n=4)
  d = solve.memit_delta(jnp.asarray(keys), jnp.asarray(resid), jnp.asarray(cov), 1e-6)
  np.testing.assert_allclose(np.asarray(d).T @ keys, resid, rtol=2e-3, atol=2e-3)


def test_alphaedit_preserves_keys_and_matches_reference():
  w, cov, k0, keys, resid = _problem(full_rank=False)
  p = solve.null_space_projector(jnp.asarray(cov), 2e-2)
  p_ref = ref.get_project(cov.astype(np.float64), 2e-2)
  assert int(round(float(jnp.trace(p)))) == 48 - 32          # null space of the rank-32 keys
  assert _rel(p, p_ref) <= 1e-5
  cache = np.zeros((48, 48), np.float32)
  cache[:5, :5] = np.eye(5)
  d = solve.alphaedit_delta(jnp.asarray(keys), jnp.asarray(resid), p, jnp.asarray(cache), 10.0)
  want = ref.alphaedit_update(keys.astype(np.float64), resid.astype(np.float64), p_ref,
                              cache.astype(np.float64), 10.0)
  assert _rel(np.asarray(d).T, want) <= 1e-5
  # Outputs on preserved keys do not change: ||Delta K0|| / ||W K0||.
  ratio = np.linalg.norm(np.asarray(d, np.float64).T @ k0) / np.linalg.norm(
      w.astype(np.float64).T @ k0)
  assert ratio <= 1e-6, ratio


def test_updates_under_jit_vmap():
  w, cov, _, keys, resid = _problem()
  lams = jnp.asarray([1.0, 10.0, 100.0])
  with jax.enable_x64(True):
    ds = jax.vmap(lambda l: solve.memit_delta(jnp.asarray(keys), jnp.asarray(resid),
                                              jnp.asarray(cov), l))(lams)
  for i, lam in enumerate([1.0, 10.0, 100.0]):
    want = ref.memit_update(keys.astype(np.float64), resid.astype(np.float64),
                            cov.astype(np.float64), lam, 1)
    assert _rel(np.asarray(ds[i]).T, want) <= 1e-5


def test_null_space_modes_exact_on_a_known_spectrum():
  rng = np.random.default_rng(3)
  q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
  ev = np.array([8.0, 4.0, 1.0, 0.05, 0.03, 0.01])
  cov = jnp.asarray((q * ev) @ q.T, jnp.float32)
  for thr, mode, dim in [(2e-2, "absolute", 1), (0.04, "absolute", 2), (0.005, "relative", 2),
                         (0.2, "relative", 4), (0.005, "energy", 2), (0.01, "energy", 3),
                         (0.07, "energy", 3), (0.1, "energy", 4)]:
    p = np.asarray(solve.null_space_projector(cov, thr, mode))
    # P projects on exactly the `dim` smallest eigen-directions (energy: their eigenvalues
    # sum to at most thr x trace = thr x 13.09, the next one would exceed it)
    want = q[:, 6 - dim:] @ q[:, 6 - dim:].T
    np.testing.assert_allclose(p, want, atol=2e-5, err_msg=f"{mode} {thr}")
  with pytest.raises(ValueError, match="absolute, relative, energy"):
    solve.null_space_projector(cov, 0.1, "fraction")


@pytest.mark.parametrize("d,n_tokens,scale", [(16, 40, 1.0), (48, 400, 30.0)])
def test_relative_lambda_and_l2_keep_a_fixed_fraction(d, n_tokens, scale):
  # A lone key keeps 1 / (1 + w) of its residual under lambda = w k^T C^-1 k (MEMIT) and
  # L2 = w ||P k||^2 (AlphaEdit), whatever the width, the sample behind C and the key scale.
  rng = np.random.default_rng(d)
  x = rng.normal(size=(n_tokens, d)) * scale
  cov = jnp.asarray(x.T @ x / n_tokens, jnp.float32)
  k = jnp.asarray(rng.normal(size=(d, 1)) * scale, jnp.float32)
  r = jnp.asarray(rng.normal(size=(5, 1)), jnp.float32)
  w = 0.25
  with jax.enable_x64(True):
    lam = solve.memit_lambda(k, cov, w, "relative")
    got = k.T @ solve.memit_delta(k, r, cov, lam)
  np.testing.assert_allclose(np.asarray(got), np.asarray(r.T) / (1 + w), rtol=1e-4)
  p = solve.null_space_projector(cov, 0.3, "energy")
  l2 = solve.alphaedit_l2(k, p, w, "relative")
  got = k.T @ solve.alphaedit_delta(k, r, p, jnp.zeros((d, d)), l2)
  np.testing.assert_allclose(np.asarray(got), np.asarray(r.T) / (1 + w), rtol=1e-3)
  # absolute: the number itself (the reference's constants, by name)
  assert float(solve.memit_lambda(k, cov, 15000.0, "absolute")) == 15000.0
  assert float(solve.alphaedit_l2(k, p, 10.0, "absolute")) == 10.0


def test_reference_constants_by_name_and_bad_modes():
  ref = methods.MemitParams(lambda_mode="absolute", mom2_update_weight=15000.0)
  assert (ref.lambda_mode, ref.mom2_update_weight) == ("absolute", 15000.0)
  a = methods.AlphaEditParams(nullspace_mode="absolute", nullspace_threshold=2e-2,
                              l2_mode="absolute", L2=10.0)
  assert (a.nullspace_threshold, a.L2) == (2e-2, 10.0)
  with pytest.raises(ValueError, match="lambda_mode must be one of absolute, relative"):
    methods.MemitParams(lambda_mode="scaled")
  with pytest.raises(ValueError, match="nullspace_mode must be one of absolute, relative, energy"):
    methods.AlphaEditParams(nullspace_mode="fraction")
  with pytest.raises(ValueError, match="a fraction"):
    methods.AlphaEditParams(nullspace_threshold=2.0)


def test_empty_null_space_gives_no_update():
  cov = jnp.eye(8)
  p = solve.null_space_projector(cov, 1e-3, "relative")   # every eigenvalue is the largest
  assert float(jnp.trace(p)) == 0.0
  k = jnp.ones((8, 3))
  l2 = solve.alphaedit_l2(k, p, 0.1, "relative")
  d = solve.alphaedit_delta(k, jnp.ones((4, 3)), p, jnp.zeros((8, 8)), l2)
  assert bool(jnp.all(d == 0))
