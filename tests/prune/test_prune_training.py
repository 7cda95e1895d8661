"""Training-time pruning: schedule formula, ERK budget, SNIP scores, masks kept through optax."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxparams.prune import distribution, optax_pruning, schedule, snip


def test_polynomial_schedule_is_zhu_gupta():
  s = schedule.PolynomialSchedule(begin_step=10, end_step=110, update_freq=20, power=3)
  for t in [0, 10, 35, 60, 110, 500]:
    prog = min(max((t - 10) / 100, 0), 1)
    assert float(s.sparsity(0.8, t)) == pytest.approx(0.8 * (1 - (1 - prog) ** 3), abs=1e-6)
  assert [bool(s.is_update_step(t)) for t in (9, 10, 30, 31, 110, 130)] == [
      False, True, True, False, True, False]
  with pytest.raises(ValueError, match="end_step"):
    schedule.PolynomialSchedule(begin_step=5, end_step=5)


def test_erk_reaches_budget_and_caps_dense_layers():
  params = {"emb": jnp.zeros((1000, 8)), "a": jnp.zeros((64, 64)), "b": jnp.zeros((4, 4)),
            "bias": jnp.zeros(64)}
  d = distribution.erk(params, 0.5)
  assert "bias" not in d
  sizes = {"emb": 8000, "a": 4096, "b": 16}
  kept = sum((1 - d[k]) * n for k, n in sizes.items())
  assert kept == pytest.approx(0.5 * sum(sizes.values()), rel=1e-9)
  assert d["b"] == 0.0                        # would be over-dense: kept dense
  # ERK densities are proportional to (sum dims / prod dims) among the non-dense leaves
  ratio = (1 - d["emb"]) / (1 - d["a"])
  assert ratio == pytest.approx((1008 / 8000) / (128 / 4096), rel=1e-9)
  with pytest.raises(ValueError, match="matches nothing|matched nothing|no leaf|selector"):
    distribution.uniform(params, 0.5, where="nothing/*")


def _regression():
  k1, k2 = jax.random.split(jax.random.key(0))
  x = jax.random.normal(k1, (128, 16))
  w_true = jax.random.normal(k2, (16, 4)) * (jnp.arange(16) < 8)[:, None]
  y = x @ w_true
  params = {"dense": {"kernel": jax.random.normal(jax.random.key(3), (16, 4)) * 0.1,
                      "bias": jnp.zeros(4)}}
  loss = lambda p, x, y: jnp.mean((x @ p["dense"]["kernel"] + p["dense"]["bias"] - y) ** 2)
  return params, loss, x, y


def test_gradual_pruning_keeps_zeros_after_every_update_and_reaches_target():
  params, loss, x, y = _regression()
  sched = schedule.PolynomialSchedule(begin_step=0, end_step=30, update_freq=5)
  tx = optax_pruning.wrap_optax(optax.adam(0.05), {"dense/kernel": 0.5}, schedule=sched)
  state = tx.init(params)

  @jax.jit
  def step(p, s):
    g = jax.grad(loss)(p, x, y)
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  loss0 = float(loss(params, x, y))
  seen = []
  for t in range(200):
    params, state = step(params, state)
    w = params["dense"]["kernel"]
    pruned = ~state.masks["dense/kernel"]
    assert bool(jnp.all(w[pruned] == 0))                 # zero after every update
    seen.append(float(jnp.mean(w == 0)))
  target_at = [float(sched.sparsity(0.5, t)) for t in range(0, 31, 5)]
  assert seen[-1] == pytest.approx(0.5, abs=1e-3)
  assert seen[0] == pytest.approx(math.floor(target_at[0] * 64) / 64, abs=1e-9)
  assert all(b >= a for a, b in zip(seen, seen[1:]))    # monotone ramp
  assert float(loss(params, x, y)) < 0.03 * loss0        # still fits with half the weights


def test_snip_scores_are_grad_times_weight_and_fixed_masks_hold():
  params, loss, x, y = _regression()
  scores = snip.snip_scores(loss, params, x, y)
  g = jax.grad(loss)(params, x, y)["dense"]["kernel"]
  np.testing.assert_allclose(scores["dense/kernel"], jnp.abs(g * params["dense"]["kernel"]),
                             rtol=1e-6)
  masks = snip.snip_masks(loss, params, x, y, sparsity=0.75)
  flat = np.asarray(scores["dense/kernel"]).ravel()
  thresh = np.sort(flat)[int(0.75 * flat.size)]
  assert (np.asarray(masks["dense/kernel"]).ravel() == (flat >= thresh)).all()
  tx = optax_pruning.wrap_optax(optax.sgd(0.1), masks=masks)
  state = tx.init(params)
  for _ in range(3):
    u, state = tx.update(jax.grad(loss)(params, x, y), state, params)
    params = optax.apply_updates(params, u)
  assert optax_pruning.sparsity_report(params, "dense/kernel")["dense/kernel"] == 0.75
  per_layer = snip.snip_masks(loss, params, x, y, sparsity=0.5, distribution="erk")
  assert float(per_layer["dense/kernel"].mean()) == 0.5
  with pytest.raises(ValueError, match="unknown distribution"):
    snip.snip_masks(loss, params, x, y, sparsity=0.5, distribution="nope")


def test_wrap_optax_errors():
  with pytest.raises(ValueError, match="exactly one"):
    optax_pruning.wrap_optax(optax.sgd(0.1))
  tx = optax_pruning.wrap_optax(optax.sgd(0.1), {"missing": 0.5})
  with pytest.raises(ValueError, match="missing"):
    tx.init({"w": jnp.zeros((2, 2))})


def test_trainer_prunes_from_config_and_keeps_zeros(tmp_path):
  import importlib.util
  import pathlib
  from jaxparams.train import trainer
  from jaxparams import tree as jtree
  path = pathlib.Path(__file__).parents[2] / "configs" / "prune_lm.py"
  spec = importlib.util.spec_from_file_location("_prune_lm", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  config = mod.get_config("runlocal")
  result = trainer.train(config, tmp_path / "run")
  flat = jtree.flatten(result.params)
  pruned = {p: (float(jnp.mean(w == 0)), math.floor(0.8 * w.size) / w.size)
            for p, w in flat.items() if jp_default(p, w)}
  assert pruned and all(got == want for got, want in pruned.values()), pruned
  assert all(float(jnp.mean(flat[p] == 0)) < 0.5 for p in flat
             if "embed" in p or "lm_head" in p)
  with pytest.raises(ValueError, match="pruning"):
    bad = mod.get_config("runlocal")
    bad.pruning.end_step = 0
    trainer.check_config(bad)


@pytest.mark.slow
def test_trainer_gg_init_from_config(tmp_path):
  import importlib.util
  import pathlib
  from jaxparams.prune import fit_gg
  from jaxparams.train import trainer
  path = pathlib.Path(__file__).parents[2] / "configs" / "prune_lm.py"
  spec = importlib.util.spec_from_file_location("_prune_lm", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  shapes = {}
  for nu in (0.0, 1.0):
    config = mod.get_config(f"runlocal,dense,gg_nu={nu}")
    config.num_steps, config.optim.lr = 1, 1e-9             # the initial values, as drawn
    emb = trainer.train(config, tmp_path / f"run{nu}").params["embed_tokens"]["embedding"]
    shapes[nu] = (fit_gg(emb)[0], float(emb.std()))
  assert shapes[0.0][0] == pytest.approx(2.0, abs=0.15)       # the model's normal(0.02)
  assert shapes[1.0][0] == pytest.approx(1.0, abs=0.15)       # GG nu=1 ...
  assert shapes[1.0][1] == pytest.approx(shapes[0.0][1], rel=0.05)   # ... same variance
  bad = mod.get_config("runlocal,gg_nu=-1.0")
  with pytest.raises(ValueError, match="gg_nu"):
    trainer.check_config(bad)


def jp_default(path, leaf):
  from jaxparams.prune import default_prune_where
  return default_prune_where(path, leaf)
