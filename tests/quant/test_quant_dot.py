"""``jp.quant.dot``: QArray weights give the same product as ``x @ w.dequantize()``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams.quant import packing
from jaxparams.quant.dot import dot, dot_general, kernel_supported
from jaxparams.quant.qarray import QArray
from jaxparams.quant.rtn import RTNConfig, rtn


def _w(k=256, n=128, seed=0):
  return jax.random.normal(jax.random.key(seed), (k, n))


@pytest.mark.parametrize("bits,group,symmetric", [(4, 128, False), (4, 32, True), (8, None, True)])
def test_dot_int_qarray_equals_dequantized_matmul(bits, group, symmetric):
  qw = rtn(_w(), RTNConfig(bits=bits, group_size=group, symmetric=symmetric))
  assert kernel_supported(qw)
  x = jax.random.normal(jax.random.key(1), (2, 3, 256))
  y = jax.jit(dot)(x, qw)
  want = jnp.einsum("bsk,kn->bsn", x, qw.dequantize(jnp.float32), precision="highest")
  assert y.shape == (2, 3, 128) and y.dtype == jnp.float32
  np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-4)


def test_dot_bf16_activations_keep_dtype():
  qw = rtn(_w(), RTNConfig(bits=4, group_size=128))
  x = jax.random.normal(jax.random.key(2), (4, 256)).astype(jnp.bfloat16)
  y = dot(x, qw)
  want = (x.astype(jnp.float32) @ qw.dequantize(jnp.bfloat16).astype(jnp.float32))
  assert y.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y, np.float32), want, rtol=2e-2, atol=2e-1)


def test_dot_pallas_interpret_on_cpu_matches():
  qw = rtn(_w(), RTNConfig(bits=8, group_size=128))
  x = jax.random.normal(jax.random.key(3), (3, 256))
  y = dot(x, qw, implementation="pallas")
  np.testing.assert_allclose(y, x @ qw.dequantize(jnp.float32), rtol=1e-4, atol=1e-3)


def test_dot_nf4_and_gidx_fall_back_to_dequantize():
  k, n = 64, 16
  q = jax.random.randint(jax.random.key(4), (k, n), 0, 16)
  scale = jax.random.uniform(jax.random.key(5), (k // 32, n))
  nf4 = QArray(codes=packing.pack(q, 4), scale=scale, zero=None, shape=(k, n), bits=4,
               group_size=32, kind="nf4", dtype="float32")
  assert not kernel_supported(nf4)
  x = jax.random.normal(jax.random.key(6), (5, k))
  np.testing.assert_allclose(dot(x, nf4), x @ nf4.dequantize(), rtol=1e-5, atol=1e-5)
  g_idx = jnp.asarray(np.random.default_rng(0).permutation(np.arange(k) // 32), jnp.int32)
  act = QArray(codes=packing.pack(q, 4), scale=scale, zero=jnp.full_like(scale, 8.0),
               shape=(k, n), bits=4, group_size=32, kind="int", dtype="float32", g_idx=g_idx)
  assert not kernel_supported(act)
  np.testing.assert_allclose(dot(x, act), x @ act.dequantize(), rtol=1e-5, atol=1e-5)


def test_dot_plain_array_and_dot_general():
  w = _w(64, 8)
  x = jnp.ones((2, 64), jnp.bfloat16)
  assert dot(x, w).dtype == jnp.bfloat16
  qw = rtn(_w(), RTNConfig(bits=4, group_size=64))
  x = jax.random.normal(jax.random.key(7), (2, 256))
  dn = (((1,), (0,)), ((), ()))
  np.testing.assert_allclose(dot_general(x, qw, dn), dot(x, qw), rtol=1e-6)
  # A non-Dense contraction uses the dequantized weight.
  ones = jnp.ones((256, 3))
  np.testing.assert_allclose(dot_general(ones, qw, (((0,), (0,)), ((), ()))),
                             ones.T @ qw.dequantize(), rtol=1e-4, atol=1e-4)


def test_dot_shape_mismatch_is_an_error():
  qw = rtn(_w(), RTNConfig(bits=4, group_size=128))
  with pytest.raises(ValueError, match="input features"):
    dot(jnp.ones((2, 128)), qw)


def test_dot_accepts_awq_results():
  """Models injected with jp.quant.dot run AWQ-quantized kernels: (x / s) @ Q(W * s)."""
  import jax
  import numpy as np
  from jaxparams.quant.awq import AWQConfig, awq
  from jaxparams.quant.dot import dot as qdot
  w = jax.random.normal(jax.random.key(0), (64, 32))
  x = jax.random.normal(jax.random.key(1), (128, 64)) * jax.numpy.linspace(0.1, 5.0, 64)
  res = awq(w, x, AWQConfig(bits=4, group_size=32))
  got = qdot(x, res)
  want = x @ res.dequantize(jax.numpy.float32)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
