"""Adapter combination vs PEFT's add_weighted_adapter (fixtures), and the exact ``linear``."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.adapt.combining import combine
from jaxparams.adapt.peft_io import module_map

FIX = Path(__file__).resolve().parents[1] / "fixtures"
COMBOS = {  # as in make_peft_fixture.py
    "linear": (["x", "y"], [0.7, -0.4], {}),
    "cat": (["x", "y", "z"], [0.7, -0.4, 1.2], {}),
    "svd": (["x", "y", "z"], [0.7, -0.4, 1.2], dict(svd_rank=5)),
    "ties": (["x", "y"], [0.7, 0.5], dict(density=0.5)),
    "ties_frequency": (["x", "y"], [0.7, 0.5], dict(density=0.5, majority_sign_method="frequency")),
    "magnitude_prune": (["x", "y"], [0.7, -0.4], dict(density=0.5)),
    "dare_linear": (["x", "y"], [0.7, -0.4], dict(density=0.6)),
    "dare_ties": (["x", "y"], [0.7, 0.5], dict(density=0.6)),
    "ties_svd": (["x", "y", "z"], [0.7, 0.5, 1.0], dict(density=0.5, svd_rank=4)),
}


@pytest.fixture(scope="module")
def setup():
  _, params, config = jp.models.from_hf(FIX / "llama_tiny")
  ads = {n: jp.adapt.load_peft(FIX / f"peft_combo_{n}", config)[0] for n in "xyz"}
  out = np.load(FIX / "peft_outputs.npz")
  mm = module_map(config)
  mods = sorted({k.split("/")[2] for k in out.files if k.startswith("combo/")})
  return ads, out, {m: mm[m][0] for m in mods}


@pytest.mark.parametrize("cname", list(COMBOS))
def test_combination_matches_peft(cname, setup):
  ads, out, mods = setup
  names, weights, kw = COMBOS[cname]
  ctype = cname.replace("_frequency", "")
  ctype = "peft_linear" if ctype == "linear" else ctype
  masks = None
  if "dare" in cname:  # PEFT's draws, recorded by the fixture script (torch orientation)
    masks = {fp: {side.lower(): [jnp.asarray(out[f"combo/{cname}/{m}/mask_{side}_{n}"]).T
                                 for n in names] for side in "AB"} for m, fp in mods.items()}
  ours = jp.adapt.entries(combine([ads[n] for n in names], weights, ctype, masks=masks, **kw))
  for m, fp in mods.items():
    ref_a, ref_b = out[f"combo/{cname}/{m}/A"], out[f"combo/{cname}/{m}/B"]
    a, b = np.asarray(ours[fp]["a"]).T, np.asarray(ours[fp]["b"]).T
    assert float(ours[fp]["scale"]) == 1.0
    if cname.endswith("svd"):  # singular vectors are defined up to sign: compare products
      np.testing.assert_allclose(b @ a, ref_b @ ref_a, rtol=1e-4, atol=5e-6, err_msg=m)
    else:
      np.testing.assert_allclose(a, ref_a, rtol=1e-5, atol=1e-6, err_msg=m)
      np.testing.assert_allclose(b, ref_b, rtol=1e-5, atol=1e-6, err_msg=m)


def test_exact_linear_is_the_weighted_sum_and_peft_linear_is_not(setup):
  ads, out, mods = setup
  w = [0.7, -0.4]
  exact = jp.adapt.entries(combine([ads["x"], ads["y"]], w, "linear"))
  ex, ey = jp.adapt.entries(ads["x"]), jp.adapt.entries(ads["y"])
  for m, fp in mods.items():
    want = sum(wi * e[fp]["scale"] * (e[fp]["a"] @ e[fp]["b"]) for wi, e in zip(w, (ex, ey)))
    got = exact[fp]["a"] @ exact[fp]["b"]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    peft = (out[f"combo/linear/{m}/B"] @ out[f"combo/linear/{m}/A"]).T
    assert float(jnp.abs(peft - want).max()) > 1e-2   # PEFT's cross terms


def test_svd_combination_error_is_eckart_young(setup):
  ads, _, mods = setup
  w = [0.7, -0.4, 1.2]
  exact = jp.adapt.entries(combine([ads[n] for n in "xyz"], w, "linear"))
  svd = jp.adapt.entries(combine([ads[n] for n in "xyz"], w, "svd", svd_rank=3))
  fp = next(iter(mods.values()))
  d = exact[fp]["a"] @ exact[fp]["b"]
  s = np.linalg.svd(np.asarray(d, np.float64), compute_uv=False)
  err = float(jnp.linalg.norm(d - svd[fp]["a"] @ svd[fp]["b"]))
  assert err == pytest.approx(np.sqrt(np.sum(s[3:] ** 2)), rel=1e-3)


def test_combine_errors_and_keys(setup):
  ads, _, _ = setup
  with pytest.raises(ValueError, match="valid"):
    combine([ads["x"], ads["y"]], [1, 1], "average")
  with pytest.raises(ValueError, match="equal ranks"):
    combine([ads["x"], ads["z"]], [1, 1], "ties", density=0.5)
  with pytest.raises(ValueError, match="random"):
    combine([ads["x"], ads["y"]], [1, 1], "dare_linear", density=0.5)
  r1 = combine([ads["x"], ads["y"]], [1, 1], "dare_ties", density=0.5, key=jax.random.key(0))
  r2 = combine([ads["x"], ads["y"]], [1, 1], "dare_ties", density=0.5, key=jax.random.key(0))
  assert jp.tree.allclose(r1, r2, rtol=0)
  kept = float(jnp.mean(jp.adapt.entries(r1)["layers_0/attn/q_proj/kernel"]["a"] != 0))
  assert 0.5 < kept < 0.95  # union of two density-0.5 masks


def test_vmap_and_grad_over_scales(setup):
  _, params, config = jp.models.from_hf(FIX / "llama_tiny")
  ad = setup[0]["x"]
  ids = jnp.arange(8)[None]
  model = jp.models.Llama(config, dot=jp.adapt.dot)

  def logits(wt):
    return model.apply({"params": jp.adapt.inject(params, ad, weight=wt)}, ids)

  sweep = jax.jit(jax.vmap(logits))(jnp.array([0.0, 0.5, 1.0]))
  base = jax.jit(lambda p: jp.models.Llama(config).apply({"params": p}, ids))(params)
  np.testing.assert_allclose(sweep[0], base, atol=1e-5)
  merged = jax.jit(lambda p: jp.models.Llama(config).apply({"params": p}, ids))(
      jp.adapt.merge(params, ad, weight=0.5))
  np.testing.assert_allclose(sweep[1], merged, atol=1e-4)
  # d/dw of the unmerged forward = the finite difference of the merged one
  f = lambda wt: jnp.sum(logits(wt)[0, -1] ** 2)
  g = jax.jit(jax.grad(f))(0.5)
  fs = jax.jit(jax.vmap(f))(jnp.array([0.5 + 1e-2, 0.5 - 1e-2]))
  fd = (fs[0] - fs[1]) / 2e-2
  assert float(g) == pytest.approx(float(fd), rel=2e-3)
  # single Linear: d/ds sum(x @ W + s x a b) = sum(x a b), exactly
  x = jax.random.normal(jax.random.key(0), (3, 4))
  lw = lambda s: jp.adapt.LoraWeight(jnp.eye(4), jnp.ones((4, 2)), jnp.ones((2, 4)), s)
  gs = jax.grad(lambda s: jp.adapt.dot(x, lw(s)).sum())(jnp.float32(0.3))
  np.testing.assert_allclose(gs, (x @ jnp.ones((4, 2)) @ jnp.ones((2, 4))).sum(), rtol=1e-5)
