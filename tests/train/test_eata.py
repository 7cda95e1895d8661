"""EATA: sample selection, moving average, no-op batches, only norm affine params adapt, the
Fisher penalty; and on shifted digits it beats the source model without forgetting."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.train import digits, eata


def _toy():
  r = np.random.default_rng(0)
  params = {"bn_0": {"scale": jnp.ones(6), "bias": jnp.zeros(6)},
            "head": {"kernel": jnp.asarray(r.normal(size=(6, 4)) * 3, jnp.float32)}}
  apply_fn = lambda p, x: (x * p["bn_0"]["scale"] + p["bn_0"]["bias"]) @ p["head"]["kernel"]
  x = jnp.asarray(r.normal(size=(16, 6)), jnp.float32)
  return params, apply_fn, x


def test_default_margin_and_unreliable_uniform_predictions():
  assert math.isclose(eata.EATAConfig().margin(1000), 2.763102, rel_tol=1e-6)
  assert math.isclose(float(eata.entropy(jnp.zeros((1, 1000)))[0]), math.log(1000), rel_tol=1e-5)
  mask, w, _, _ = eata.select(jnp.zeros((3, 1000)), jnp.zeros(1000), jnp.bool_(False),
                              e_margin=2.763102, d_margin=0.05)
  assert not mask.any() and not w.any()


def test_moving_average_and_redundancy_filter():
  logits = jnp.asarray([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 0.1, 0]])
  probs = jax.nn.softmax(logits)
  ma = jnp.asarray([1.0, 0, 0, 0])
  mask, w, new_ma, has = eata.select(logits, ma, jnp.bool_(True), e_margin=1.0, d_margin=0.3)
  # Row 0 is redundant with m (cos ~ 1), row 2 unreliable (E ~ ln 4): only row 1 counts.
  assert mask.tolist() == [False, True, False] and bool(has)
  np.testing.assert_allclose(new_ma, 0.9 * ma + 0.1 * probs[1], rtol=1e-6)
  np.testing.assert_allclose(w[1], np.exp(1.0 - eata.entropy(logits)[1]), rtol=1e-6)
  # Before m exists the redundancy filter is off and m starts at the selected mean.
  mask, _, new_ma, _ = eata.select(logits, jnp.zeros(4), jnp.bool_(False), e_margin=1.0,
                                   d_margin=0.3)
  assert mask.tolist() == [True, True, False]
  np.testing.assert_allclose(new_ma, probs[:2].mean(0), rtol=1e-6)


def test_batch_without_selected_samples_changes_nothing():
  params, apply_fn, x = _toy()
  cfg = eata.EATAConfig(e_margin=1e-6, lr=0.1)  # nothing is that confident
  state, step, _ = eata.make_adapter(apply_fn, params, config=cfg, num_classes=4)
  new, _ = step(state, x)
  chex.assert_trees_all_equal(new.affine, state.affine)
  chex.assert_trees_all_equal(new.opt_state, state.opt_state)
  assert int(new.n_updates) == 0 and not bool(new.has_ma)


def test_only_norm_affine_params_adapt_and_fisher_anchors_them():
  params, apply_fn, x = _toy()
  cfg = eata.EATAConfig(e_margin=10.0, d_margin=1.1, lr=0.05, fisher_alpha=5.0)
  fisher = eata.fisher_diagonal(apply_fn, params, x, batch_size=8)
  assert set(fisher) == {"bn_0/scale", "bn_0/bias"}
  assert all(bool(jnp.all(v >= 0)) and float(jnp.max(v)) > 0 for v in fisher.values())
  ones = jax.tree.map(jnp.ones_like, fisher)  # F = 1: each step halves the distance to θ⁰
  drift = {}
  for name, f, method in (("tent", None, "tent"), ("eata0", None, "eata"), ("eata", ones, "eata")):
    state, step, params_of = eata.make_adapter(apply_fn, params, method=method, config=cfg,
                                               num_classes=4, fisher=f)
    for _ in range(5):
      state, _ = step(state, x)
    out = params_of(state)
    np.testing.assert_array_equal(out["head"]["kernel"], params["head"]["kernel"])
    drift[name] = float(sum(jnp.sum(jnp.square(out["bn_0"][k] - params["bn_0"][k]))
                            for k in ("scale", "bias")))
  assert drift["tent"] > 0 and drift["eata0"] > 0
  assert drift["eata"] < 0.2 * drift["eata0"]  # the Fisher penalty holds the params back


def test_unknown_method_is_named():
  params, apply_fn, _ = _toy()
  with pytest.raises(ValueError, match="tent, eata"):
    eata.make_adapter(apply_fn, params, method="sar", num_classes=4)
  with pytest.raises(ValueError, match="shift"):
    digits.apply_shift("fog", np.zeros((1, 8, 8)), np.random.default_rng(0))


@pytest.mark.slow
def test_on_shifted_digits_eata_adapts_without_forgetting_and_tent_collapses():
  """lr 0.3, two rounds of six shifts (benchmarks/train_eata.py has the table)."""
  res = digits.compare_tta(lr=0.3, rounds=2)
  assert res["clean_before"] > 0.9
  assert res["tent"]["clean_after"] < 0.5  # Tent drifts into a degenerate solution...
  assert res["eata"]["clean_after"] > res["clean_before"] - 0.05  # ...EATA keeps clean accuracy
  assert res["eata"]["mean"] > res["tent"]["mean"] + 0.05
  assert 0.05 < res["eata"]["used"] < 0.6  # and updates on a minority of the samples
