"""Dequant-matmul kernels vs the jnp reference (CPU: interpret mode + TPU/CUDA export lowering).

The checks every op shares (interpret == reference, api implementations, gradients, export
lowering) come from ``kernel_contract.py``; this file adds the dequant-specific ones.
"""

import importlib.util
import pathlib
import sys

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

_spec = importlib.util.spec_from_file_location(
    "kernel_contract", pathlib.Path(__file__).with_name("kernel_contract.py"))
_contract = sys.modules.setdefault("kernel_contract", importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(_contract)
KernelContract, Case, _ = _contract.load()


def _case(m, k, n, *, bits, group_size, dtype, zero=True, seed=0):
  x, codes, scale, z = make(m, k, n, bits=bits, group_size=group_size, dtype=dtype, zero=zero,
                            seed=seed)
  return Case({"x": x, "codes": codes, "scale": scale, "zero": z},
              {"bits": bits, "group_size": group_size})


# bits x group size (None = per-channel) x dtype; zeros on for most of them. K=256 -> 16/32-word
# K blocks: 2 K steps; 4 groups per step at g32, 2 steps per group per-channel 8-bit.
_CASES = {}
for _b in (4, 8):
  for _g in (32, 128, None):
    for _d in (F32, BF16):
      _gs = 256 if _g is None else _g
      _CASES[f"w{_b}-g{_g or 'channel'}-{jnp.dtype(_d).name}"] = _case(
          5, 256, 128, bits=_b, group_size=_gs, dtype=_d,
          zero=(_b + _gs) % 3 != 0 or _d == BF16)

EXPORT_CASES = [  # (m, k, n, bits, group, zero, dtype); cuda takes bf16 only
    (1, 4096, 512, 4, 128, True, BF16),   # decode, Marlin-style g128
    (5, 1024, 256, 4, 32, True, BF16),    # many groups per K step
    (100, 2048, 256, 8, 1024, True, BF16),  # group > K step, 2 M tiles on GPU
    (16, 4096, 128, 8, 1024, True, F32),  # TPU only (the GPU kernel takes bf16/f16)
]


class TestContract(KernelContract):
  CASES = _CASES
  INTERPRET_TARGETS = ("tpu",)  # the GPU interpreter is private and slow: see the slow test below
  API_CASE = "w8-g32-float32"
  DIFF = ("x", "scale", "zero")
  TOL = TOL[F32]

  def _close(self, out, ref):
    self.TOL = TOL[jnp.dtype(out.dtype).type]
    super()._close(out, ref)

  def reference(self, case):
    a = case.arrays
    return reference.dequant_matmul_reference(a["x"], a["codes"], a["scale"], a["zero"],
                                              **case.static)

  def kernel(self, case, target):
    from jax._src.pallas.mosaic.interpret import interpret_pallas_call as ipc
    a = case.arrays
    races = a["x"].dtype == BF16  # race detection (DMAs, VMEM, parallel grid) on half the cases
    bkw = 32 if case.static["bits"] == 8 else 16
    out = pallas_tpu.dequant_matmul_tpu(a["x"], a["codes"], a["scale"], a["zero"], block_kw=bkw,
                                        interpret=pltpu.InterpretParams(detect_races=races),
                                        **case.static)
    if races:
      assert ipc.races is not None and not ipc.races.races_found
    return out

  def api(self, case, implementation):
    a = case.arrays
    return api.dequant_matmul(a["x"], a["codes"], a["scale"], a["zero"],
                              implementation=implementation, **case.static)

  def export(self, platform):
    cases = [c for c in EXPORT_CASES if platform == "tpu" or c[-1] == BF16]
    impl = "pallas_tpu" if platform == "tpu" else "pallas_gpu"
    args = [make(m, k, n, bits=b, group_size=g, dtype=d, zero=z) for m, k, n, b, g, z, d in cases]

    def fn(*flat):
      return [api.dequant_matmul(*flat[4 * i:4 * i + 4], bits=c[3], group_size=c[4],
                                 implementation=impl) for i, c in enumerate(cases)]
    return fn, tuple(a for group in args for a in group)


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


# --------------------------------------------------------------------------- GPU kernel
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
def test_api_keeps_batch_dims_on_every_implementation():
  x, codes, scale, z = make(6, 256, 128, bits=4, group_size=32, dtype=F32)
  ref = reference.dequant_matmul_reference(x, codes, scale, z, bits=4, group_size=32)
  for impl in (None, "xla", "pallas"):
    y = jax.jit(lambda x: api.dequant_matmul(x, codes, scale, z, bits=4, group_size=32,
                                             implementation=impl))(x.reshape(2, 3, 256))
    assert y.shape == (2, 3, 128)
    assert rel_err(y.reshape(6, 128), ref) < TOL[F32]


def test_api_pallas_refuses_untileable_shapes_and_none_falls_back():
  x, codes, scale, z = make(2, 96, 128, bits=4, group_size=12, dtype=F32)
  with pytest.raises(ValueError, match="cannot run these shapes on tpu.*multiples of 8"):
    api.dequant_matmul(x, codes, scale, z, bits=4, group_size=12, implementation="pallas")
  y = api.dequant_matmul(x, codes, scale, z, bits=4, group_size=12)
  assert rel_err(y, reference.dequant_matmul_reference(x, codes, scale, z, bits=4,
                                                       group_size=12)) < TOL[F32]


def test_api_errors():
  x, codes, scale, z = make(2, 256, 128, bits=4, group_size=128, dtype=F32)
  with pytest.raises(ValueError, match="codes shape"):
    api.dequant_matmul(x[:, :128], codes, scale, z, bits=4, group_size=64)
  with pytest.raises(ValueError, match="bits 4 and 8"):
    api.dequant_matmul(x, codes, scale, z, bits=3, group_size=128)
  with pytest.raises(ValueError, match="zero shape"):
    api.dequant_matmul(x, codes, scale, z[:, :64], bits=4, group_size=128)
