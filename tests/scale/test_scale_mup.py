"""μP: classification, multipliers (mup's table), and the coordinate check (flat under μP only)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxparams.scale import mup

D_IN, D_OUT, BASE = 16, 4, 64


def _init(width, key):
  k = jax.random.split(key, 3)
  return {"inp": {"kernel": jax.random.normal(k[0], (D_IN, width)) / np.sqrt(D_IN),
                  "bias": jnp.zeros(width)},
          "hidden": {"kernel": jax.random.normal(k[1], (width, width)) / np.sqrt(width),
                     "bias": jnp.zeros(width)},
          "out": {"kernel": jax.random.normal(k[2], (width, D_OUT)) / np.sqrt(width),
                  "bias": jnp.zeros(D_OUT)}}


BASE_SHAPES = mup.make_base_shapes(jax.eval_shape(functools.partial(_init, BASE), jax.random.PRNGKey(0)))


def test_classification_and_multipliers():
  wide = jax.eval_shape(functools.partial(_init, 4 * BASE), jax.random.PRNGKey(0))
  info = mup.infer(BASE_SHAPES, wide)
  kinds = {p: i.kind for p, i in info.items()}
  assert kinds == {"inp/kernel": "vector", "inp/bias": "vector", "hidden/kernel": "matrix",
                   "hidden/bias": "vector", "out/kernel": "readout", "out/bias": "scalar"}
  adam = mup.lr_multipliers(info, "adam")
  assert adam["hidden/kernel"] == 0.25 and adam["inp/kernel"] == 1.0 and adam["out/kernel"] == 1.0
  sgd = mup.lr_multipliers(info, "sgd")
  assert sgd["hidden/kernel"] == 1.0 and sgd["inp/bias"] == 4.0 and sgd["out/kernel"] == 4.0
  assert mup.output_multiplier(info) == 0.25
  assert mup.init_scales(info)["out/kernel"] == 2.0
  assert mup.init_scales(info, "constant")["hidden/kernel"] == 0.5
  # Same shapes as the base: μP reduces to SP (all multipliers 1).
  same = mup.infer(BASE_SHAPES, BASE_SHAPES, delta_shapes=mup.make_base_shapes(
      jax.eval_shape(functools.partial(_init, 2 * BASE), jax.random.PRNGKey(0))))
  assert set(mup.lr_multipliers(same).values()) == {1.0}


def test_mup_adam_update_equals_scaled_adam():
  params = jax.jit(functools.partial(_init, 2 * BASE))(jax.random.PRNGKey(1))
  grads = jax.tree_util.tree_map(lambda p: np.full(p.shape, 0.3, np.float32), params)
  run = jax.jit(lambda opt: opt.update(grads, opt.init(params), params)[0], static_argnums=0)
  upd = run(mup.mup_adam(1e-2, BASE_SHAPES, params))
  ref = run(optax.adam(1e-2))
  np.testing.assert_allclose(upd["hidden"]["kernel"], ref["hidden"]["kernel"] / 2, rtol=1e-6)
  np.testing.assert_allclose(upd["inp"]["kernel"], ref["inp"]["kernel"], rtol=1e-6)
  upd = run(mup.mup_sgd(1e-2, BASE_SHAPES, params))
  np.testing.assert_allclose(upd["inp"]["bias"], -1e-2 * 0.3 * 2 * np.ones(2 * BASE), rtol=1e-6)


def test_errors():
  with pytest.raises(ValueError, match="paths differ"):
    mup.infer(BASE_SHAPES, {"x": jnp.ones(3)})
  with pytest.raises(ValueError, match="optimizer"):
    mup.lr_multipliers({}, "lion")
  two = {"a/kernel": mup.MuInfo("readout", 2.0, 1.0), "b/kernel": mup.MuInfo("readout", 2.0, 1.0)}
  with pytest.raises(ValueError, match="one readout"):
    mup.output_multiplier(two)


def test_output_multiplier_at_base_width_is_one_without_delta_shapes():
  """At the base width nothing is infinite, so no leaf is classed as readout; it used to raise."""
  info = mup.infer(BASE_SHAPES, BASE_SHAPES)
  assert mup.output_multiplier(info) == 1.0
  assert mup.output_multiplier(info, readout="out/kernel") == 1.0


def test_coord_check_flat_under_mup_not_sp():
  widths = [128, 512, 2048]

  def apply(params, x, width, mu):
    h1 = jax.nn.relu(x @ params["inp"]["kernel"] + params["inp"]["bias"])
    h2 = jax.nn.relu(h1 @ params["hidden"]["kernel"] + params["hidden"]["bias"])
    mult = width / BASE if mu else 1.0
    return h2 @ params["out"]["kernel"] / mult + params["out"]["bias"], {"h1": h1, "h2": h2}

  rng = np.random.default_rng(1)
  xs = rng.normal(size=(4, 64, D_IN)).astype(np.float32)
  ys = rng.normal(size=(4, 64, D_OUT)).astype(np.float32)
  batches = [(xs[i], ys[i]) for i in range(4)]
  lr = 0.01
  sp = mup.coord_check(widths, _init, lambda p, x, w: apply(p, x, w, False),
                       lambda w, p: optax.adam(lr), batches, seeds=2)
  mu = mup.coord_check(widths, lambda w, k: mup.rescale_init(_init(w, k), BASE_SHAPES),
                       lambda p, x, w: apply(p, x, w, True),
                       lambda w, p: mup.mup_adam(lr, BASE_SHAPES, p), batches, seeds=2)
  mu_slopes = {k: mup.loglog_slope(widths, v) for k, v in mu.items()}
  sp_slopes = {k: mup.loglog_slope(widths, v) for k, v in sp.items()}
  assert all(abs(s) < 0.1 for s in mu_slopes.values()), mu_slopes
  assert sp_slopes["output"] > 0.5, sp_slopes
