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

from jaxparams.kernels.dequant_matmul import api, coverage, pallas_gpu, pallas_tpu, reference

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
    (2, 2304, 128, 4, 128, None),    # Gemma-2-2B K=2304: 288 words -> 2 blocks of 144 words
    (2, 2304, 128, 4, 2304, None),   # per-channel over 2 K blocks
    (3, 384, 700, 4, 128, None),     # N=700: 512-column blocks, a partial last block
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
  # K/P = 8191 words (prime): one full-K block, over the VMEM budget even at the smallest blocks
  with pytest.raises(ValueError, match="VMEM"):
    pallas_tpu.plan_blocks(1, 8 * 8191, 128, bits=4, group_size=8, dtype=BF16)


def test_tpu_plan_edges_fit_vmem():
  """Llama-2-7B's down_proj (K=11008 = 1376 words) no longer takes one 1376-word block, and
  BERT's 30522-word head no longer one 30522-column block: every grid plan fits VMEM."""
  b = pallas_tpu.plan_blocks(1, 11008, 4096, bits=4, group_size=128, dtype=BF16)
  assert (b.bkw, b.bn) == (32, 512)
  b = pallas_tpu.plan_blocks(256, 768, 30522, bits=8, group_size=768, dtype=BF16)
  assert (b.bn, b.bkw) == (512, 192)
  for _, k, n, bits, g in coverage.grid():
    if k % g == 0:
      for m in (1, 256):
        b = pallas_tpu.plan_blocks(m, k, n, bits=bits, group_size=g, dtype=BF16)
        rows = b.scale_rows if b.scale_blocked else k // g
        assert pallas_tpu._vmem_bytes(b.bm, b.bn, b.bkw, 32 // bits, 2, rows) <= pallas_tpu.VMEM_BUDGET


# --------------------------------------------------------------------------- GPU kernel
@pytest.mark.slow
@pytest.mark.parametrize("m,k,bits,g,zero", [
    (5, 512, 4, 128, True),     # 1 K step of 4 groups (iota-select path)
    (8, 512, 8, 512, False),    # group > K step (lax.div path), 2 K steps
    (4, 384, 8, 384, True),     # per-channel K=384 at 8 bits: group refined to gcd(384, 256)
    (2, 768, 4, 32, True),      # BERT K=768: 2 K steps, the second half zero padding
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
  with pytest.raises(ValueError, match="multiple of 8"):
    pallas_gpu.plan_tiles(8, 96, 128, bits=4, group_size=12, dtype=BF16)
  with pytest.raises(ValueError, match="tile_n"):
    pallas_gpu.plan_tiles(8, 1024, 96, bits=4, group_size=128, dtype=BF16, tile_n=96)
  # Edges are padded now: K = 384 (MiniLM), N = 96, per-channel G = K = 11008 (gcd with 512).
  t = pallas_gpu.plan_tiles(3, 384, 96, bits=4, group_size=128, dtype=BF16)
  assert (t.k_pad, t.n_pad, t.group, t.scale_repeat, t.pad_weights) == (512, 128, 128, 1, False)
  t = pallas_gpu.plan_tiles(1, 11008, 4096, bits=4, group_size=11008, dtype=BF16)
  assert (t.k_pad, t.group, t.scale_repeat) == (11264, 256, 43)
  assert pallas_gpu.plan_tiles(1, 768, 30522, bits=4, group_size=128, dtype=BF16).pad_weights


# --------------------------------------------------------------------------- GPU shape coverage
# What the shape grid (coverage.grid(): 19 distinct layers of MiniLM, BERT-base/large, Qwen2-0.5B,
# Llama-2-7B, Llama-3-8B x bits {4, 8} x group {32, 64, 128, 256, per-channel} = 190) gives on
# each target. Before the edge padding the GPU kernel refused 70 of the 180 valid ones.
GRID_INVALID = {(k, n, b, 256) for k, ns in ((384, (384, 1536)), (896, (896, 128, 4864)))
                for n in ns for b in (4, 8)}


@pytest.mark.parametrize("target", ["gpu", "tpu"])
def test_grid_fallbacks_are_exactly_the_claimed_ones(target):
  grid = list(coverage.grid())
  assert len(grid) == 190
  got = {}
  for _, k, n, bits, g in grid:
    got.setdefault(coverage.status(k, n, bits=bits, group_size=g, target=target)[0],
                   set()).add((k, n, bits, g))
  assert got.get("xla", set()) == set()           # nothing falls back to XLA
  assert got["invalid"] == GRID_INVALID           # 10: G=256 does not divide K=384 or 896
  assert len(got["pallas"]) == 180
  # every MiniLM, BERT and Llama-family layer at the usual groups runs the kernel
  for k, n in [s for shapes in coverage.MODEL_LAYERS.values() for s in shapes]:
    for bits in (4, 8):
      for g in (32, 64, 128, k):
        assert coverage.status(k, n, bits=bits, group_size=g, target=target)[0] == "pallas"


def test_status_names_the_remaining_kernel_limits():
  assert coverage.status(384, 384, bits=4, group_size=128, target="gpu", dtype="float32") == (
      "xla", "pallas_gpu dequant_matmul needs bf16/f16 activations, got float32")
  kind, why = coverage.status(96, 128, bits=4, group_size=12, target="gpu")
  assert kind == "xla" and "multiple of 8" in why
  assert coverage.status(384, 128, bits=2, group_size=128, target="gpu")[0] == "xla"
  with pytest.raises(ValueError, match="valid: \\['gpu', 'tpu'\\]"):
    coverage.status(384, 128, bits=4, group_size=128, target="cpu")


def _emulation_cases():
  """One case per distinct padding situation of the grid: real K and group, N cut to
  ``64 + N mod 64`` columns (the N-side padding; N mod 4 decides the stride rule)."""
  seen = {}
  for _, k, n, bits, g in coverage.grid():
    if k % g == 0:
      seen.setdefault((k, 64 + n % 64, bits, g), None)
  return list(seen)


# default run: the grid's cases that pad K or N at 4 bits g128, per-channel 4 bits (group
# refined to gcd(K, 512)) and 8 bits g64; the slow test below takes all of the grid's cases.
_EMULATION_FAST = [(k, n, b, g) for k, n, b, g in _emulation_cases()
                   if (k % (64 * 32 // b) or n % 64)
                   and ((b, g) in ((4, 128), (8, 64)) or (b == 4 and g == k))]


@pytest.mark.parametrize("cases", [_EMULATION_FAST, pytest.param(_emulation_cases(),
                                                                   marks=pytest.mark.slow)],
                         ids=["edges", "grid"])
def test_padded_emulation_equals_reference_on_the_grid(cases):
  """The padded operands the GPU kernel computes with (x padded in M and K, scale rows repeated
  to the kernel's group, weights zero-filled past K and N as TMA reads them), run through the
  reference and sliced, equal the reference on the original operands, for every K/group/N-edge
  of the grid."""
  rng = np.random.default_rng(7)
  for k, n, bits, g in cases:
    p = 32 // bits
    m = 3
    codes = rng.integers(0, 2**32, (k // p, n), dtype=np.uint32)
    scale = rng.uniform(0.5, 1.5, (k // g, n)).astype(np.float32) / 2**bits
    zero = rng.uniform(0, 2**bits - 1, (k // g, n)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    tiles = pallas_gpu.plan_tiles(m, k, n, bits=bits, group_size=g, dtype=BF16)
    xp, cp, sp, zp = (np.asarray(a) for a in _pad_jit(x, codes, scale, zero, bits=bits,
                                                       tiles=tiles))
    assert xp.shape == (tiles.m_pad, tiles.k_pad) and cp.shape == (tiles.k_pad // p, tiles.n_pad)
    assert tiles.k_pad % tiles.tile_k == 0 and tiles.n_pad % tiles.tile_n == 0
    assert tiles.tile_k % tiles.group == 0 or tiles.group % tiles.tile_k == 0
    w_pad = _np_dequantize(cp, sp, zp, bits, tiles.group)
    w = _np_dequantize(codes, scale, zero, bits, g)
    np.testing.assert_array_equal(w_pad[:k, :n], w)              # same weights inside
    assert not np.any(w_pad[k:]) and not np.any(w_pad[:, n:])    # exact zeros outside
    got = (xp.astype(np.float64) @ w_pad)[:m, :n]
    np.testing.assert_allclose(got, x.astype(np.float64) @ w, rtol=1e-12, atol=1e-9)


_pad_jit = jax.jit(lambda *a, **kw: pallas_gpu.pad_operands(*a, **kw, pad_weights=True),
                   static_argnames=("bits", "tiles"))


def _np_dequantize(codes, scale, zero, bits, g):
  """The layout's equation in numpy float64 (independent of reference.py)."""
  p = 32 // bits
  shifts = (np.arange(p, dtype=np.uint64) * bits)[None, :, None]
  q = (codes.astype(np.uint64)[:, None, :] >> shifts) & ((1 << bits) - 1)
  q = q.reshape(codes.shape[0] * p, codes.shape[1]).astype(np.float64)
  rows = np.arange(q.shape[0]) // g
  return (q - zero.astype(np.float64)[rows]) * scale.astype(np.float64)[rows]


# Export lowering for cuda: the default run takes one shape per edge kind; the slow test all of them.
_EXPORT_EDGES = [(384, 1536, 4, 128), (1536, 384, 8, 1536), (896, 128, 4, 896),
                 (11008, 4096, 4, 11008), (4864, 896, 8, 64), (768, 30522, 4, 128)]


def _export_gpu(shapes, m=1, platform="cuda"):
  impl = "pallas_gpu" if platform == "cuda" else "pallas_tpu"

  def fn(*flat):
    return [api.dequant_matmul(*flat[4 * i:4 * i + 4], bits=b, group_size=g,
                               implementation=impl) for i, (_, _, b, g) in enumerate(shapes)]
  args = []
  for k, n, b, g in shapes:
    args += [jax.ShapeDtypeStruct((m, k), BF16), jax.ShapeDtypeStruct((k // (32 // b), n), jnp.uint32),
             jax.ShapeDtypeStruct((k // g, n), F32), jax.ShapeDtypeStruct((k // g, n), F32)]
  text = jax.export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module()
  marker = "mosaic_gpu" if platform == "cuda" else "tpu_custom_call"
  assert text.count(marker) >= len(shapes)


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_export_lowers_padded_edges(platform):
  _export_gpu(_EXPORT_EDGES + [(2304, 896, 4, 128)], platform=platform)


def _kernel_config(m, k, n, bits, g):
  """What the lowered GPU kernel depends on: the tiles, pipelining, group handling and which
  operands are padded. Shapes with the same configuration give the same kernel with other grid
  extents and loop bounds (checked once: the same HLO up to numbers, kernel modules of the same
  size to 0.04%), so lowering one of them covers the others."""
  t = pallas_gpu.plan_tiles(m, k, n, bits=bits, group_size=g, dtype=BF16)
  return (m, bits, t.tile_n, t.tile_m, t.tile_k, t.max_concurrent_steps, t.group, t.scale_repeat,
          t.pad_weights, k != t.k_pad, n != t.n_pad, m != t.m_pad)


def _first_seen_configs() -> dict[tuple[str, int], list]:
  """``{(model, m): shapes}``: each kernel configuration of the grid under the first model that
  needs it, for one and 64 rows."""
  taken, seen = {}, set()
  for m in (1, 64):
    for mdl, k, n, b, g in coverage.grid():
      cfg = _kernel_config(m, k, n, b, g) if k % g == 0 else None
      if cfg is not None and cfg not in seen:
        seen.add(cfg)
        taken.setdefault((mdl, m), []).append((k, n, b, g))
  return taken


_FIRST_SEEN = _first_seen_configs()


@pytest.mark.slow
@pytest.mark.parametrize("model", list(coverage.MODEL_LAYERS))
def test_gpu_export_lowers_every_kernel_configuration_of_the_grid(model):
  """Every distinct kernel the grid asks for lowers for cuda (96 configurations of its 360
  shape x batch cases), each under the model that first needs it."""
  for m in (1, 64):
    if (model, m) in _FIRST_SEEN:
      _export_gpu(_FIRST_SEEN[model, m], m=m)


@pytest.mark.slow
def test_gpu_kernel_interpret_padded_minilm_layer():
  """The GPU kernel in jax's GPU interpreter on a padded shape: K=384 (MiniLM, 3 of the 4 groups
  of a 512-row K step), N=40 (a partial tile), M=3."""
  interpret_params = pytest.importorskip(
      "jax._src.pallas.mosaic_gpu.interpret.params").InterpretGPUParams
  x, codes, scale, z = make(3, 384, 40, bits=4, group_size=128, dtype=BF16)
  out = pallas_gpu.dequant_matmul_gpu(x, codes, scale, z, bits=4, group_size=128,
                                      interpret=interpret_params())
  ref = reference.dequant_matmul_reference(x, codes, scale, z, bits=4, group_size=128)
  assert out.shape == ref.shape and rel_err(out, ref) < TOL[BF16]


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
