"""The digits merging suite (reduced size) and the learned methods on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.demo import digits_suite as ds
from jaxparams.merge import learned


def test_shifts_are_real_transformations():
  x = np.random.default_rng(0).uniform(0, 1, (5, 64)).astype(np.float32)
  np.testing.assert_allclose(ds.shift_images("invert", x), 1 - x, rtol=1e-6)
  np.testing.assert_allclose(ds.shift_images("mirror", ds.shift_images("mirror", x)), x)
  for name in ds.SHIFTS:
    y = ds.shift_images(name, x, seed=3)
    assert y.shape == x.shape and not np.allclose(y, x), name
    np.testing.assert_array_equal(y, ds.shift_images(name, x, seed=3))
  with pytest.raises(ValueError, match="valid"):
    ds.shift_images("sheared", x)
  with pytest.raises(ValueError, match="distinct"):
    ds.build_suite(("rotate", "rotate"))


@pytest.fixture(scope="module")
def tiny():
  return ds.build_suite(("rotate", "invert"), hidden=(64, 32), pretrain_steps=150,
                        probe_steps=20, finetune_steps=100, finetune_lr=3e-3, n_val=60)


def test_suite_experts_beat_pretrained_on_their_task(tiny):
  pre = ds.evaluate(tiny, tiny.pretrained)
  exp = ds.evaluate(tiny, tiny.experts)
  for n in tiny.names:
    assert exp[n] > pre[n] + 0.05, (n, exp[n], pre[n])
  # experts are fine-tunes of the pretrained backbone, heads are per task
  assert jax.tree.structure(tiny.experts[0]) == jax.tree.structure(tiny.pretrained)
  assert not np.allclose(tiny.tasks[0].head["kernel"], tiny.tasks[1].head["kernel"])


def test_learned_methods_on_tiny_suite(tiny):
  res = ds.merge_table(tiny, ("pretrained", "simple_average", "regmean", "fisher",
                              "adamerging_task"), ada_steps=40, ada_trace_every=0)
  for m, r in res.items():
    assert 0.0 <= r["acc"]["average"] <= 1.0, m
  # RegMean uses the Gram matrices: it differs from the simple average
  assert res["regmean"]["acc"] != res["simple_average"]["acc"]
  assert res["adamerging_task"]["entropy_end"] < res["adamerging_task"]["entropy_start"]
  with pytest.raises(ValueError, match="valid"):
    ds.merge_table(tiny, ("bogus",))


def test_vmapped_grid_equals_loop(tiny):
  acc = ds.task_accuracies_fn(tiny)
  cs = jnp.array([[0.2, 0.5], [1.0, 0.0]])
  grid = jax.vmap(lambda c: acc(learned.taskwise_merge(tiny.pretrained, tiny.experts, c)))(cs)
  for c, row in zip(cs, grid):
    m = jp.merge.task_arithmetic(tiny.pretrained, tiny.experts, weights=c, lam=1.0)
    np.testing.assert_allclose(row, acc(m), atol=1e-6)


@pytest.mark.slow
def test_cmaes_on_tiny_suite_lowers_validation_loss(tiny):
  pytest.importorskip("evosax")
  res = ds.merge_table(tiny, ("cmaes_task",), cma_generations=10, cma_population=8)
  assert res["cmaes_task"]["val_error_end"] <= res["cmaes_task"]["val_error_start"]
