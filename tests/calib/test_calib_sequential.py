"""The one sequential block driver: block i is calibrated on the outputs of transformed block i-1."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

import jaxparams as jp
import jaxparams.models  # noqa: F401
from jaxparams import calib
from jaxparams import tree as jtree
from jaxparams.calib.sequential import block_groups, run_block_chain, run_groups

CFG = jp.models.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32,
                            num_hidden_layers=3, num_attention_heads=2)


@pytest.fixture(scope="module")
def model():
  module = jp.models.Llama(CFG)
  ids = jax.random.randint(jax.random.key(1), (2, 6), 0, 32)
  params = module.init(jax.random.key(0), ids)["params"]
  mask = np.ones((2, 6), np.int32)
  mask[1, 4:] = 0
  batches = [{"input_ids": np.asarray(ids), "attention_mask": mask}]
  return module, params, batches


def _scaled(params, paths, factor):
  flat = jtree.flatten(params)
  flat.update({p: flat[p] * factor for p in paths})
  return jtree.unflatten(flat, like=params)


def test_run_groups_each_block_sees_earlier_blocks_transformed(model):
  module, params, batches = model
  order = calib.linear_order(module, params, batches[0])
  groups = block_groups(order)
  assert [calib.block_of(g[0]) for g in groups] == ["layers_0", "layers_1", "layers_2",
                                                    "lm_head/kernel"]
  seen, cur = [], [params]

  def step(group, stats):
    seen.append(stats)
    cur[0] = _scaled(cur[0], group, 0.5)
    return cur[0]

  out = run_groups(module, params, batches, groups, step)
  done: list[str] = []
  for group, stats in zip(groups, seen):
    # the reference: statistics of this group on the model with the earlier groups halved
    ref = calib.collect_stats(module, _scaled(params, done, 0.5), batches, paths=group)
    assert sorted(stats) == sorted(ref)
    for p in group:
      chex.assert_trees_all_close(stats[p].xtx, ref[p].xtx, rtol=1e-5, atol=1e-5)
    done += group
  chex.assert_trees_all_close(out, _scaled(params, order, 0.5))
  # sequential=False: every group's statistics come from the untransformed model
  seen.clear()
  cur[0] = params
  run_groups(module, params, batches, groups, step, sequential=False)
  full = calib.collect_stats(module, params, batches)
  for group, stats in zip(groups, seen):
    for p in group:
      chex.assert_trees_all_close(stats[p].xtx, full[p].xtx, rtol=1e-5, atol=1e-5)


def test_block_chain_feeds_each_block_the_transformed_outputs(model):
  module, params, batches = model
  flat = jtree.flatten(params)
  abstract = {p: jax.ShapeDtypeStruct(v.shape, v.dtype) for p, v in flat.items()}
  order = calib.linear_order(module, params, batches[0])
  got: dict = {}
  reads: list[str] = []

  def read(p):
    reads.append(p)
    return np.asarray(flat[p])

  def step(b):
    want = [p for p in order if p in b.flat]
    got[b.name] = (b.stats(b.flat, want), b.fp_next is not None)
    return {p: b.flat[p] * 0.5 for p in want}

  names = run_block_chain(module, abstract, read, batches, step, fp_chain=True)
  assert names == ["layers_0", "layers_1", "layers_2"]
  assert len(reads) == len(set(reads))          # each weight read once, block by block
  done: list[str] = []
  for name in names:
    stats, had_fp = got[name]
    assert had_fp
    ref = calib.collect_stats(module, _scaled(params, done, 0.5), batches,
                              paths=list(stats))
    for p in stats:
      chex.assert_trees_all_close(stats[p].xtx, ref[p].xtx, rtol=1e-4, atol=1e-4)
      chex.assert_trees_all_close(stats[p].count, ref[p].count)
    done += [p for p in order if p.startswith(name + "/")]


class _NoBlocks(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(2, name="head")(nn.Dense(4, name="proj")(x))


def test_block_chain_refuses_a_model_without_blocks():
  mlp = _NoBlocks()
  p = mlp.init(jax.random.key(0), jnp.ones((1, 3)))["params"]
  abstract = {k: jax.ShapeDtypeStruct(v.shape, v.dtype) for k, v in jtree.flatten(p).items()}
  with pytest.raises(ValueError, match="calls no numbered transformer block"):
    run_block_chain(mlp, abstract, lambda k: None, [jnp.ones((1, 3))], lambda b: {})


def test_input_abs_max_and_gram_are_calib_statistics(model):
  module, params, batches = model
  xs = calib.capture_inputs(module, params, **{k: jnp.asarray(v) for k, v in batches[0].items()})
  p = "layers_1/mlp/down_proj/kernel"
  a, kw = calib.capture.as_call(batches[0])
  amax = calib.capture.input_abs_max(module, params, [(a, kw)], [p])[p]
  # the masked rows are dropped from captured rows but abs-max sees every row (as OmniQuant)
  full = calib.capture_inputs(module, params, token_mask=np.ones((2, 6)),
                              **{k: jnp.asarray(v) for k, v in batches[0].items()})[p]
  chex.assert_trees_all_close(amax, jnp.max(jnp.abs(full), axis=0))
  g = calib.accumulate_gram(None, xs[p][:5])
  g = calib.accumulate_gram(g, xs[p][5:])
  chex.assert_trees_all_close(g, xs[p].T @ xs[p], rtol=1e-5, atol=1e-5)


def test_fisher_is_a_calib_statistic_and_merge_reexports_it():
  from jaxparams.calib.fisher import causal_lm_fisher, fisher_diagonal
  from jaxparams.merge.learned import fisher as mf
  assert mf.fisher_diagonal is fisher_diagonal
  module = jp.models.Llama(CFG)
  ids = np.array([[3, 4, 5, 1], [6, 7, 0, 0]], np.int32)
  mask = np.array([[1, 1, 1, 1], [1, 1, 0, 0]], np.int32)
  params = module.init(jax.random.key(0), ids)["params"]
  f = causal_lm_fisher(module, params, [{"input_ids": ids, "attention_mask": mask}])

  def loglik(p, i, m):
    logp = jax.nn.log_softmax(module.apply({"params": p}, i[None], m[None])[0, :-1], -1)
    return jnp.sum(jnp.take_along_axis(logp, i[1:, None], -1)[:, 0] * m[1:])

  grads = [jax.grad(loglik)(params, jnp.asarray(ids[n]), jnp.asarray(mask[n])) for n in range(2)]
  want = jax.tree.map(lambda a, b: (a * a + b * b) / 2, *grads)
  chex.assert_trees_all_close(f, want, rtol=1e-5, atol=1e-8)
