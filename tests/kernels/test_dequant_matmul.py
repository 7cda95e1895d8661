"""Dequant-matmul kernels vs the jnp reference (CPU: interpret mode + TPU/CUDA export lowering)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental.pallas import tpu as pltpu

from jaxparams.kernels.dequant_matmul import api, pallas_gpu, pallas_tpu, reference

F32, BF16 = jnp.float32, jnp.bfloat16


def make(m, k, n, *, bits, group_size, dtype, zero=True, seed=0):
  """Random packed weight (all bits random) + float scales/zeros + activations (numpy RNG)."""
  rng = np.random.default_rng(seed)
  p = 32 // bits
  codes = jnp.asarray(rng.integers(0, 2**32, (k // p, n), dtype=np.uint32))
  scale = jnp.asarray(rng.uniform(0.5, 1.5, (k // group_size, n)) / 2**bits, jnp.float32)
  z = jnp.asarray(rng.uniform(0, 2**bits - 1, (k // group_size, n)), jnp.float32) if zero else None
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32).astype(dtype)
  return x, codes, scale, z


def rel_err(out, ref):
  out, ref = np.asarray(out, np.float32), np.asarray(ref, np.float32)
  return float(np.max(np.abs(out - ref)) / np.max(np.abs(ref)))


TOL = {F32: 2e-5, BF16: 1e-2}


# --------------------------------------------------------------------------- reference
def test_reference_unpack_matches_quant_packing():
  from jaxparams.quant import packing
  rng = np.random.default_rng(1)
  q = jnp.asarray(rng.integers(0, 16, (96, 5)), jnp.int32)
  words = packing.pack(q, 4)
  np.testing.assert_array_equal(reference.unpack(words, 4, 96), q)
  q8 = jnp.asarray(rng.integers(0, 256, (64, 3)), jnp.int32)
  np.testing.assert_array_equal(reference.unpack(packing.pack(q8, 8), 8, 64), q8)
  # int32 words (HF GPTQ qweight) are reinterpreted bit for bit.
  np.testing.assert_array_equal(
      reference.unpack(jax.lax.bitcast_convert_type(words, jnp.int32), 4, 96), q)


def test_reference_unpack_bit_order_is_lsb_first():
  word = jnp.array([[0x76543210]], jnp.uint32)
  assert reference.unpack(word, 4, 8)[:, 0].tolist() == list(range(8))
  assert reference.unpack(jnp.array([[0x04030201]], jnp.uint32), 8, 4)[:, 0].tolist() == [1, 2, 3, 4]


def test_reference_dequantize_matches_qarray():
  from jaxparams.quant.rtn import RTNConfig, rtn
  w = jnp.asarray(np.random.default_rng(3).standard_normal((256, 64)), jnp.float32)
  qa = rtn(w, RTNConfig(bits=4, group_size=32))
  got = reference.dequantize(qa.codes, qa.scale, qa.zero, bits=4, group_size=32)
  np.testing.assert_allclose(got, qa.dequantize(jnp.float32), rtol=1e-6, atol=1e-6)


def test_reference_matmul_equals_explicit_formula():
  x, codes, scale, z = make(3, 64, 8, bits=8, group_size=32, dtype=F32)
  q = np.asarray(reference.unpack(codes, 8, 64), np.float64)
  g = np.arange(64) // 32
  w = (q - np.asarray(z, np.float64)[g]) * np.asarray(scale, np.float64)[g]
  want = np.asarray(x, np.float64) @ w
  got = reference.dequant_matmul_reference(x, codes, scale, z, bits=8, group_size=32)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------------------- TPU kernel
# bits x group size (None = per-channel) x dtype; zeros on for half of them.
TPU_CASES = [(b, g, d) for b in (4, 8) for g in (32, 128, None) for d in (F32, BF16)]


@pytest.mark.parametrize("bits,group,dtype", TPU_CASES)
def test_tpu_kernel_interpret_matches_reference(bits, group, dtype):
  from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc
  k, n, m = 256, 128, 5
  g = k if group is None else group
  with_zero = (bits + g) % 3 != 0 or dtype == BF16
  x, codes, scale, z = make(m, k, n, bits=bits, group_size=g, dtype=dtype, zero=with_zero)
  # Race detection (TPU semantics: DMAs, VMEM, "parallel" grid dims) on half the cases.
  params = pltpu.InterpretParams(detect_races=dtype == BF16)
  # 16/32-word K blocks: 2 K steps; 4 groups per step at g32, 2 steps per group per-channel 8-bit.
  out = pallas_tpu.dequant_matmul_tpu(x, codes, scale, z, bits=bits, group_size=g,
                                      block_kw=32 if bits == 8 else 16, interpret=params)
  ref = reference.dequant_matmul_reference(x, codes, scale, z, bits=bits, group_size=g)
  assert out.dtype == dtype and out.shape == (m, n)
  assert rel_err(out, ref) < TOL[dtype]
  if dtype == BF16:
    assert ipc.races is not None and not ipc.races.races_found


@pytest.mark.parametrize("m,k,n,bits,g,kw", [
    (16, 1024, 256, 4, 128, None),   # default blocks: 128 words -> one K step, 2 N blocks
    (3, 1024, 128, 4, 1024, 32),     # per-channel, 4 K steps, scale block (1, bn)
    (8, 1024, 128, 8, 512, 32),      # group > K block: scale row picked in-kernel
])
def test_tpu_kernel_shapes(m, k, n, bits, g, kw):
  x, codes, scale, z = make(m, k, n, bits=bits, group_size=g, dtype=F32, seed=m)
  out = pallas_tpu.dequant_matmul_tpu(x, codes, scale, z, bits=bits, group_size=g, block_kw=kw,
                                      interpret=pltpu.InterpretParams())
  ref = reference.dequant_matmul_reference(x, codes, scale, z, bits=bits, group_size=g)
  assert rel_err(out, ref) < TOL[F32]


def test_tpu_plan_rejects_untileable_shapes():
  with pytest.raises(ValueError, match="multiple of 128"):
    pallas_tpu.plan_blocks(8, 512, 200, bits=4, group_size=128, dtype=F32, block_n=100)
  with pytest.raises(ValueError, match="multiples of 8"):
    pallas_tpu.plan_blocks(8, 512, 128, bits=4, group_size=12, dtype=F32)
  with pytest.raises(ValueError, match="bits 4 and 8"):
    pallas_tpu.plan_blocks(8, 512, 128, bits=2, group_size=128, dtype=F32)


def _export(fn, platform, *args):
  exp = jax.export.export(jax.jit(fn), platforms=[platform])(*args)
  return exp.mlir_module()


EXPORT_CASES = [  # (m, k, n, bits, group, zero, dtype)
    (1, 4096, 512, 4, 128, True, BF16),
    (5, 1024, 256, 4, 32, True, F32),
    (16, 4096, 128, 8, 1024, True, F32),
]


@pytest.mark.parametrize("m,k,n,bits,g,zero,dtype", EXPORT_CASES)
def test_tpu_export_lowering(m, k, n, bits, g, zero, dtype):
  """Mosaic front-end lowering (block-shape rules, op support) without a TPU."""
  x, codes, scale, z = make(m, k, n, bits=bits, group_size=g, dtype=dtype, zero=zero)
  fn = lambda x, c, s, z: api.dequant_matmul(x, c, s, z, bits=bits, group_size=g,
                                             implementation="pallas_tpu")
  text = _export(fn, "tpu", x, codes, scale, z)
  assert "tpu_custom_call" in text


# --------------------------------------------------------------------------- GPU kernel
GPU_EXPORT_CASES = [  # (m, k, n, bits, group, zero)
    (1, 4096, 512, 4, 128, True),     # decode, Marlin-style g128
    (8, 512, 128, 8, 32, True),       # 8 groups per K step
    (100, 2048, 256, 8, 1024, True),  # group > K step, 2 M tiles
]


@pytest.mark.parametrize("m,k,n,bits,g,zero", GPU_EXPORT_CASES)
def test_gpu_export_lowering(m, k, n, bits, g, zero):
  """Full Mosaic GPU lowering (layouts, SMEM budget, TMA shapes) runs on a CPU-only jaxlib."""
  x, codes, scale, z = make(m, k, n, bits=bits, group_size=g, dtype=BF16, zero=zero)
  fn = lambda x, c, s, z: api.dequant_matmul(x, c, s, z, bits=bits, group_size=g,
                                             implementation="pallas_gpu")
  text = _export(fn, "cuda", x, codes, scale, z)
  assert "mosaic_gpu" in text


@pytest.mark.slow
@pytest.mark.parametrize("m,k,bits,g,zero", [
    (5, 512, 4, 128, True),     # 1 K step of 4 groups (iota-select path)
    (8, 512, 8, 512, False),    # group > K step (lax.div path), 2 K steps
])
def test_gpu_kernel_interpret_matches_reference(m, k, bits, g, zero):
  """jax's Mosaic GPU interpreter (private in 0.10.2; single-block grids only: N=64, M<=tile_m).

  The interpreter cannot evaluate layout-annotated ``plgpu.load``, transposed wgmma operands
  or the WGMMA accumulator, so ``interpret`` swaps just those for ``ref[...]``, ``jnp.dot``
  and an SMEM accumulator; pipeline, unpacking, scale selection and x permutation are the
  kernel's own code. Export lowering above covers the swapped parts.
  """
  interpret_params = pytest.importorskip(
      "jax._src.pallas.mosaic_gpu.interpret.params").InterpretGPUParams
  x, codes, scale, z = make(m, k, 64, bits=bits, group_size=g, dtype=BF16, zero=zero)
  out = pallas_gpu.dequant_matmul_gpu(x, codes, scale, z, bits=bits, group_size=g,
                                      interpret=interpret_params())
  ref = reference.dequant_matmul_reference(x, codes, scale, z, bits=bits, group_size=g)
  assert rel_err(out, ref) < TOL[BF16]


def test_gpu_plan_limits():
  with pytest.raises(ValueError, match="bf16/f16"):
    pallas_gpu.plan_tiles(8, 1024, 128, bits=4, group_size=128, dtype=F32)
  with pytest.raises(ValueError, match="multiple of 512"):
    pallas_gpu.plan_tiles(8, 256, 128, bits=4, group_size=128, dtype=BF16)
  with pytest.raises(ValueError, match="tile_n"):
    pallas_gpu.plan_tiles(8, 1024, 96, bits=4, group_size=128, dtype=BF16)


# --------------------------------------------------------------------------- dispatcher
def test_api_default_on_cpu_is_reference_and_keeps_batch_dims():
  x, codes, scale, z = make(6, 256, 128, bits=4, group_size=32, dtype=F32)
  xb = x.reshape(2, 3, 256)
  y = jax.jit(lambda x: api.dequant_matmul(x, codes, scale, z, bits=4, group_size=32))(xb)
  ref = reference.dequant_matmul_reference(x, codes, scale, z, bits=4, group_size=32)
  assert y.shape == (2, 3, 128)
  np.testing.assert_allclose(y.reshape(6, 128), ref, rtol=1e-6, atol=1e-5)


def test_api_pallas_on_cpu_interprets():
  x, codes, scale, z = make(3, 256, 128, bits=8, group_size=128, dtype=BF16)
  y = api.dequant_matmul(x[None], codes, scale, z, bits=8, group_size=128,
                         implementation="pallas")
  ref = reference.dequant_matmul_reference(x, codes, scale, z, bits=8, group_size=128)
  assert y.shape == (1, 3, 128) and rel_err(y[0], ref) < TOL[BF16]


def test_api_errors():
  x, codes, scale, z = make(2, 256, 128, bits=4, group_size=128, dtype=F32)
  with pytest.raises(ValueError, match="unknown implementation"):
    api.dequant_matmul(x, codes, scale, z, bits=4, group_size=128, implementation="triton")
  with pytest.raises(ValueError, match="codes shape"):
    api.dequant_matmul(x[:, :128], codes, scale, z, bits=4, group_size=64)
  with pytest.raises(ValueError, match="bits 4 and 8"):
    api.dequant_matmul(x, codes, scale, z, bits=3, group_size=128)
  with pytest.raises(ValueError, match="zero shape"):
    api.dequant_matmul(x, codes, scale, z[:, :64], bits=4, group_size=128)
