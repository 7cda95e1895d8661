"""The digits merging suite (tiny sizes) and the learned methods on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.demo import digits_methods as dm
from jaxparams.demo import digits_shifts as sh
from jaxparams.demo import digits_suite as ds
from jaxparams.merge import learned


def _imgs(n=6, seed=0):
  return np.random.default_rng(seed).uniform(0, 1, (n, 64)).astype(np.float32)


def test_families_are_deterministic_under_a_seed_and_vary_across_seeds():
  x = _imgs()
  random_families = {"rotate", "noise", "elastic", "occlude", "salt_pepper"}
  binary = {"invert", "mirror", "vflip"}  # applied at strength 1 only
  for name in sh.FAMILIES:
    st = 1.0 if name in binary else 0.7
    a = sh.transform_images(name, x, strength=st, seed=3)
    np.testing.assert_array_equal(a, sh.transform_images(name, x, strength=st, seed=3))
    assert a.shape == x.shape and a.dtype == np.float32 and not np.allclose(a, x), name
    assert a.min() >= 0.0 and a.max() <= 1.0, name
    b = sh.transform_images(name, x, strength=st, seed=4)
    assert (not np.array_equal(a, b)) == (name in random_families), name


def test_families_match_their_definitions():
  x = _imgs()
  img = x.reshape(-1, 8, 8)
  np.testing.assert_allclose(sh.transform_images("invert", x), 1 - x, rtol=1e-6)
  np.testing.assert_array_equal(sh.transform_images("mirror", x),
                                img[:, :, ::-1].reshape(-1, 64))
  np.testing.assert_array_equal(sh.transform_images("vflip", x), img[:, ::-1].reshape(-1, 64))
  np.testing.assert_array_equal(sh.transform_images("invert", x, strength=0.99), x)
  np.testing.assert_allclose(sh.transform_images("low_contrast", x, strength=0.5),
                             0.5 + (x - 0.5) * 0.6, rtol=1e-6)
  # an integer shift moves the image by (2, 2) pixels
  np.testing.assert_allclose(sh.transform_images("shift", x).reshape(-1, 8, 8)[:, 2:, 2:],
                             img[:, :-2, :-2], atol=1e-6)
  # strength 0 leaves every graded family unchanged
  for name in sh.FAMILIES:
    np.testing.assert_allclose(sh.transform_images(name, x, strength=0.0), x, atol=1e-6,
                               err_msg=name)
  with pytest.raises(ValueError, match="valid"):
    sh.transform_images("sheared", x)
  with pytest.raises(ValueError, match="strength"):
    sh.transform_images("blur", x, strength=1.5)
  with pytest.raises(ValueError, match="distinct"):
    ds.build_suite(("rotate", "rotate"))


def test_pretraining_set_labels_domain_times_ten_plus_digit():
  x, y = _imgs(20), np.arange(20) % 10
  xp, yp = ds.pretraining_set(x, y, copies=3, seed=1)
  assert xp.shape == (80, 64) and yp.shape == (80,)
  np.testing.assert_array_equal(yp % 10, np.tile(y, 4))  # the digit is kept
  np.testing.assert_array_equal(xp[:20], x)
  unchanged = yp[20:] < 10
  np.testing.assert_array_equal(xp[20:][unchanged], np.tile(x, (3, 1))[unchanged])
  xq, yq = ds.pretraining_set(x, y, copies=3, seed=1)
  np.testing.assert_array_equal(xp, xq)
  np.testing.assert_array_equal(yp, yq)


@pytest.fixture(scope="module")
def tiny():
  return ds.build_suite(("rotate", "invert"), hidden=(64, 32), copies=2, pretrain_steps=300,
                        finetune_steps=150)


def test_heads_are_frozen_columns_of_the_pretraining_head(tiny):
  for t in tiny.tasks:
    dom = ds.DOMAINS.index(sh.TASK_FAMILIES[t.name])
    np.testing.assert_array_equal(t.head["kernel"],
                                  tiny.pretrain_head[:, dom * 10:(dom + 1) * 10])
    np.testing.assert_allclose(jnp.linalg.norm(t.head["kernel"], axis=0), 1.0, rtol=1e-5)
  # experts are backbones only: same structure as the pretrained backbone, no head inside
  for e in tiny.experts:
    assert jax.tree.structure(e) == jax.tree.structure(tiny.pretrained)
  assert all(p.startswith("layers_") for p in jp.tree.flatten(tiny.pretrained))


def test_experts_beat_pretrained_on_their_task(tiny):
  pre, exp = ds.evaluate(tiny, tiny.pretrained), ds.evaluate(tiny, tiny.experts)
  for n in tiny.names:
    assert exp[n] > pre[n] + 0.05, (n, exp[n], pre[n])


def test_merging_touches_only_the_backbone(tiny):
  heads = [jax.tree.map(np.array, t.head) for t in tiny.tasks]
  methods = ("simple_average", "task_arithmetic", "ties", "regmean", "fisher",
             "adamerging_task")
  res = dm.merge_table(tiny, methods, ada_steps=30, ada_batch=None, ada_trace_every=0)
  for t, h in zip(tiny.tasks, heads):  # heads unchanged by every method
    chex_equal = jax.tree.map(np.array_equal, t.head, h)
    assert all(jax.tree.leaves(chex_equal)), t.name
  for m, r in res.items():
    assert 0.0 <= r["acc"]["average"] <= 1.0, m
  # RegMean uses the Gram matrices: it differs from the simple average
  assert res["regmean"]["acc"] != res["simple_average"]["acc"]
  assert res["adamerging_task"]["entropy_end"] < res["adamerging_task"]["entropy_start"]
  with pytest.raises(ValueError, match="valid"):
    dm.merge_table(tiny, ("bogus",))


def test_adamerging_over_ties_starts_from_the_picked_ties_merge(tiny):
  res = dm.merge_table(tiny, ("ties", "adamerging_ties_task", "adamerging_ties_layer"),
                       ada_steps=0, ada_batch=None, ada_trace_every=0)
  picked = res["ties"]
  for m in ("adamerging_ties_task", "adamerging_ties_layer"):
    assert res[m]["init"] == picked["lam"], m
    assert res[m]["ties_merge_func"] == picked["merge_func"], m
    assert res[m]["acc"] == picked["acc"], m  # no step taken: the TIES merge itself
  code = dm.merge_table(tiny, ("adamerging_ties_task",), ada_steps=0, ada_batch=None,
                        ada_trace_every=0, ada_ties_start=False)["adamerging_ties_task"]
  assert (code["init"], code["ties_merge_func"]) == (0.3, "sum")


def test_ties_vectors_reproduce_ties_merges(tiny):
  base, ex = tiny.pretrained, tiny.experts
  for mean in (False, True):
    for scope in ("tensor", "model"):
      tv = learned.ties_vectors(base, ex, density=0.2, scope=scope, mean=mean)
      got = jp.merge.task_arithmetic(base, tv, lam=0.7)
      want = jp.merge.ties(base, ex, density=0.2, lam=0.7, normalize=mean, trim_scope=scope)
      for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, atol=1e-6, err_msg=f"{scope} {mean}")


def test_vmapped_grid_equals_loop(tiny):
  acc = ds.task_accuracies_fn(tiny)
  cs = jnp.array([[0.2, 0.5], [1.0, 0.0]])
  grid = jax.vmap(lambda c: acc(learned.taskwise_merge(tiny.pretrained, tiny.experts, c)))(cs)
  for c, row in zip(cs, grid):
    m = jp.merge.task_arithmetic(tiny.pretrained, tiny.experts, weights=c, lam=1.0)
    np.testing.assert_allclose(row, acc(m), atol=1e-6)


def test_temperature_entropy_is_independent_of_the_logit_scale(tiny):
  import dataclasses
  hot = dataclasses.replace(tiny, tasks=[dataclasses.replace(t, head={**t.head, "scale": 100.})
                                         for t in tiny.tasks])
  a = ds.entropy_objective(tiny, temperature=0.1)(tiny.pretrained)
  b = ds.entropy_objective(hot, temperature=0.1)(tiny.pretrained)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  assert not np.allclose(ds.entropy_objective(hot)(tiny.pretrained), a)


@pytest.mark.slow
def test_black_box_searches_on_tiny_suite(tiny):
  pytest.importorskip("evosax")
  res = dm.merge_table(tiny, ("cmaes_task", "m2n2"), cma_generations=5, cma_population=6,
                       m2n2_steps=20)
  assert res["cmaes_task"]["val_error_end"] <= res["cmaes_task"]["val_error_start"]
  assert res["cmaes_task"]["evaluations"] == 31 and res["m2n2"]["evaluations"] == 22
