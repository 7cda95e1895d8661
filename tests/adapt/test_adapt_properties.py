"""Properties of the adapter math: bf16 rounding, quantized bases (QLoRA), sharding, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import jaxparams as jp


def _params(dtype=jnp.float32):
  k1, k2 = jax.random.split(jax.random.key(0))
  return {"l": {"kernel": jax.random.normal(k1, (64, 32)).astype(dtype),
                "bias": jax.random.normal(k2, (32,)).astype(dtype)}}


def test_bf16_base_merge_unmerge_rounding_is_reported_and_fp32_master_is_exact():
  master = _params()
  ad = jp.adapt.init(master, "**/kernel", rank=4, alpha=8, key=jax.random.key(1),
                     init_weights=False)
  # fp32: merge -> unmerge is exact to float32 rounding
  back = jp.adapt.unmerge(jp.adapt.merge(master, ad), ad)
  assert float(jnp.abs(back["l"]["kernel"] - master["l"]["kernel"]).max()) <= 1e-6
  # bf16: each of merge and unmerge rounds once to bf16, so the round trip is off by at most
  # about one bf16 step of the merged weight (2^-8 relative) -- keep an fp32 master to be exact
  half = jax.tree.map(lambda x: x.astype(jnp.bfloat16), master)
  merged = jp.adapt.merge(half, ad)
  assert merged["l"]["kernel"].dtype == jnp.bfloat16
  back16 = jp.adapt.unmerge(merged, ad)["l"]["kernel"].astype(jnp.float32)
  err = jnp.abs(back16 - half["l"]["kernel"].astype(jnp.float32))
  bound = 2.0 ** -8 * (jnp.abs(merged["l"]["kernel"].astype(jnp.float32))
                       + jnp.abs(half["l"]["kernel"].astype(jnp.float32)))
  assert bool(jnp.all(err <= bound)) and float(err.max()) > 0
  # merging into the fp32 master, then casting, rounds once (the PEFT-identical result)
  once = jp.adapt.merge(master, ad)["l"]["kernel"].astype(jnp.bfloat16)
  assert float(jnp.abs(once.astype(jnp.float32) - merged["l"]["kernel"].astype(jnp.float32)
                       ).max()) <= 2.0 ** -7 * float(jnp.abs(once.astype(jnp.float32)).max())


def test_qlora_quantized_base_through_base_dot():
  from jaxparams.quant.rtn import RTNConfig, rtn
  p = _params()
  ad = jp.adapt.init(p, "**/kernel", rank=4, alpha=8, key=jax.random.key(1), init_weights=False)
  e = jp.adapt.entries(ad)["l/kernel"]
  q = rtn(p["l"]["kernel"], RTNConfig(bits=4, group_size=32))
  lw = jp.adapt.LoraWeight(q, e["a"], e["b"], e["scale"])
  x = jax.random.normal(jax.random.key(2), (3, 64))
  y = jp.adapt.dot(x, lw, base_dot=jp.quant.dot)
  want = x @ q.dequantize(jnp.float32) + e["scale"] * (x @ e["a"]) @ e["b"]
  np.testing.assert_allclose(y, want, rtol=1e-4, atol=1e-4)


def test_merge_keeps_sharding_and_runs_under_jit():
  devices = np.asarray(jax.devices()[:8]).reshape(8)
  mesh = Mesh(devices, ("d",))
  p = _params()
  ad = jp.adapt.init(p, "**/kernel", rank=4, alpha=8, key=jax.random.key(1), init_weights=False)
  sharded = jax.device_put(p, {"l": {"kernel": NamedSharding(mesh, P("d", None)),
                                     "bias": NamedSharding(mesh, P())}})
  out = jax.jit(jp.adapt.merge)(sharded, ad)
  assert out["l"]["kernel"].sharding.is_equivalent_to(sharded["l"]["kernel"].sharding, 2)
  np.testing.assert_allclose(out["l"]["kernel"], jp.adapt.merge(p, ad)["l"]["kernel"], atol=1e-6)


def test_errors_name_the_tensor():
  p = _params()
  ad = jp.adapt.init(p, "**/kernel", rank=4, alpha=8, key=jax.random.key(1))
  bad = {"l": {"kernel": {**ad["l"]["kernel"], "b": jnp.zeros((5, 32))}}}
  with pytest.raises(ValueError, match="'l/kernel'"):
    jp.adapt.merge(p, bad)
  with pytest.raises(ValueError, match="only 2-D"):
    jp.adapt.init(p, "**/bias", rank=2, alpha=2, key=jax.random.key(0))
  with pytest.raises(ValueError, match="no weight"):
    jp.adapt.merge(p, {"m": {"kernel": ad["l"]["kernel"]}})
  nan = {"l": {"kernel": {**ad["l"]["kernel"], "a": ad["l"]["kernel"]["a"] * jnp.nan}}}
  with pytest.raises(ValueError, match="NaN"):
    jp.adapt.merge(p, nan)
