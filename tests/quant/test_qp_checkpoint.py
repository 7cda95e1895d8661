"""Quantized checkpoints: jaxparams layout (safetensors, orbax) and HF GPTQ layout round trips."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams import io as jio
from jaxparams.quant import checkpoint as C
from jaxparams.quant.awq import AWQConfig, awq
from jaxparams.quant.fp8 import FP8Config, fp8
from jaxparams.quant.gptq import GPTQConfig, gptq
from jaxparams.quant.hqq import HQQConfig, hqq
from jaxparams.quant.nf4 import NF4Config, nf4
from jaxparams.quant.rtn import RTNConfig, rtn
from jaxparams.quant.stats import gptq_hessian

W = jax.random.normal(jax.random.key(0), (64, 32))
X = jax.random.normal(jax.random.key(1), (128, 64)) * jnp.linspace(0.1, 3.0, 64)


def _same(a, b):
  la, ta = jax.tree_util.tree_flatten(a)
  lb, tb = jax.tree_util.tree_flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    assert np.asarray(x).dtype == np.asarray(y).dtype
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _tree():
  return {
      "int3": {"kernel": rtn(W, RTNConfig(bits=3, group_size=32))},
      "int8": {"kernel": rtn(W, RTNConfig(bits=8, group_size=-1, symmetric=True))},
      "int2": {"kernel": rtn(W, RTNConfig(bits=2, group_size=16))},
      "nf4": {"kernel": nf4(W, NF4Config(block_size=32))},
      "fp8": {"kernel": fp8(W, FP8Config())},
      "act": {"kernel": gptq(W, gptq_hessian(X), GPTQConfig(bits=4, group_size=16,
                                                             act_order=True))},
      "awq": {"kernel": awq(W, X, AWQConfig(bits=4, group_size=32, n_grid=4))},
      "norm": {"scale": jnp.arange(5.0)},
  }


def test_jaxparams_layout_round_trip_exact(tmp_path):
  tree = _tree()
  assert tree["act"]["kernel"].g_idx is not None
  C.save_quantized(tree, tmp_path / "q")
  layout = json.loads((tmp_path / "q" / C.LAYOUT_FILE).read_text())
  assert layout["tensors"]["int3/kernel"]["bits"] == 3
  assert layout["tensors"]["awq/kernel"]["input_scale"] is True
  with jio.open_checkpoint(tmp_path / "q") as r:
    assert r.spec("int3/kernel.qcodes").dtype == np.uint32
    assert r.spec("int3/kernel.qcodes").shape == (7, 32)     # ceil(64 / 10) words
    assert r.spec("fp8/kernel.qcodes").dtype == np.uint8
    assert "nf4/kernel.qzero" not in r.names()
  back = C.load_quantized(tmp_path / "q")
  _same(tree, back)
  C.save_quantized_orbax(tree, tmp_path / "o")
  _same(tree, C.load_quantized_orbax(tmp_path / "o"))
  dense = C.dequantize_flat(*C.load_quantized_flat(tmp_path / "q"))
  np.testing.assert_array_equal(dense["nf4/kernel"], np.asarray(tree["nf4"]["kernel"].dequantize()))


def _fp16_scales(qa):
  return dataclasses.replace(qa, scale=qa.scale.astype(jnp.float16).astype(jnp.float32))


def _bits_unpack(words, count, bits):
  """LSB-first bit stream of uint32 words along axis 0 -> ``count`` codes (bit matrices)."""
  w = words.view(np.uint32).astype(np.uint64)
  b = (w[:, None, :] >> np.arange(32, dtype=np.uint64)[None, :, None]) & np.uint64(1)
  b = b.reshape(-1, w.shape[1])[:count * bits].reshape(count, bits, w.shape[1])
  return (b << np.arange(bits, dtype=np.uint64)[None, :, None]).sum(1)


def _gptq_reference_dequant(t, prefix, bits, k, fmt="gptq"):
  """Independent numpy reading of the GPTQ tensors, following the published layout."""
  q = _bits_unpack(t[prefix + ".qweight"], k, bits).astype(np.float64)
  n = q.shape[1]
  z = _bits_unpack(np.ascontiguousarray(t[prefix + ".qzeros"].T), n, bits).T.astype(np.float64)
  if fmt == "gptq":
    z = (z + 1) % 2 ** bits
  g_idx = t[prefix + ".g_idx"]
  s = t[prefix + ".scales"].astype(np.float64)
  return (q - z[g_idx]) * s[g_idx]


@pytest.mark.parametrize("bits,sym,act", [(4, False, True), (3, False, False), (2, True, False),
                                          ])
def test_hf_gptq_round_trip(tmp_path, bits, sym, act):
  h = gptq_hessian(X)
  qa = _fp16_scales(gptq(W, h, GPTQConfig(bits=bits, group_size=32, symmetric=sym,
                                           act_order=act)))
  flat = {"model.l.weight": qa, "model.l.bias": np.arange(32, dtype=np.float32)}
  qcfg = C.export_gptq(flat, tmp_path / "g", config={"model_type": "llama"})
  assert (qcfg["bits"], qcfg["group_size"], qcfg["sym"], qcfg["desc_act"]) == (bits, 32, sym, act)
  t = jio.load_safetensors(tmp_path / "g")
  assert t["model.l.qweight"].dtype == np.int32 and t["model.l.qweight"].shape == (64 * bits // 32,
                                                                                   32)
  assert t["model.l.qzeros"].shape == (2, 32 * bits // 32)
  assert t["model.l.scales"].dtype == np.float16
  if bits in (2, 4, 8):  # same words as our packing, reinterpreted
    np.testing.assert_array_equal(t["model.l.qweight"].view(np.uint32), np.asarray(qa.codes))
  assert qcfg["checkpoint_format"] == ("gptq" if sym else "gptq_v2")  # v1 cannot hold zero 0
  np.testing.assert_allclose(_gptq_reference_dequant(t, "model.l", bits, 64,
                                                     qcfg["checkpoint_format"]),
                             np.asarray(qa.dequantize(), np.float64), rtol=1e-6, atol=1e-6)
  cfg = json.loads((tmp_path / "g" / "config.json").read_text())
  assert cfg["quantization_config"]["quant_method"] == "gptq"
  back, _ = C.import_gptq(tmp_path / "g", dtype="float32")
  _same(qa, back["model.l.weight"])
  np.testing.assert_array_equal(back["model.l.bias"], flat["model.l.bias"])
  C.export_gptq(back, tmp_path / "g2")
  t2 = jio.load_safetensors(tmp_path / "g2")
  for name in t:
    np.testing.assert_array_equal(t[name], t2[name])


def test_gptq_pack_matches_bitstream_definition():
  q = np.random.default_rng(0).integers(0, 8, size=(64, 3))
  words = C.gptq_pack(q, 3).view(np.uint32)
  bits = "".join(format(int(v), "03b")[::-1] for v in q[:, 1])   # LSB-first stream
  want = [int(bits[i:i + 32][::-1], 2) for i in range(0, len(bits), 32)]
  assert words[:, 1].tolist() == want
  np.testing.assert_array_equal(C.gptq_unpack(C.gptq_pack(q, 3), 3, 64), q)


def test_mismatched_layouts_are_clear_errors(tmp_path):
  tree = {"d": {"kernel": rtn(W, RTNConfig(bits=4, group_size=32))}}
  C.save_quantized(tree, tmp_path / "q")
  layout_file = tmp_path / "q" / C.LAYOUT_FILE
  layout = json.loads(layout_file.read_text())
  layout["tensors"]["d/kernel"]["bits"] = 2
  layout_file.write_text(json.dumps(layout))
  with pytest.raises(ValueError, match=r"d/kernel.qcodes has shape \(8, 32\), expected \(4, 32\)"):
    C.load_quantized(tmp_path / "q")
  layout["tensors"]["d/kernel"]["bits"] = 4
  layout["version"] = 7
  layout_file.write_text(json.dumps(layout))
  with pytest.raises(ValueError, match="version 7"):
    C.load_quantized(tmp_path / "q")
  qa = rtn(W, RTNConfig(bits=4, group_size=32))
  C.export_gptq({"l.weight": qa}, tmp_path / "g")
  with pytest.raises(ValueError, match="HF GPTQ checkpoint.*import_gptq"):
    C.load_quantized(tmp_path / "g")
  with pytest.raises(ValueError, match="not an HF GPTQ checkpoint.*load_quantized"):
    C.import_gptq(tmp_path / "q")
  qc = json.loads((tmp_path / "g" / C.GPTQ_CONFIG_FILE).read_text())
  qc["group_size"] = 16
  (tmp_path / "g" / C.GPTQ_CONFIG_FILE).write_text(json.dumps(qc))
  with pytest.raises(ValueError, match=r"l.scales has shape \(2, 32\), expected \(4, 32\)"):
    C.import_gptq(tmp_path / "g")
  with pytest.raises(ValueError, match="integer zero"):
    C.export_gptq({"l.weight": hqq(W, HQQConfig(bits=4, group_size=32))}, tmp_path / "h")
  with pytest.raises(ValueError, match="share bits"):
    C.export_gptq({"a.weight": qa, "b.weight": rtn(W, RTNConfig(bits=8, group_size=32))},
                  tmp_path / "m")
  assert not (tmp_path / "h").exists() and not (tmp_path / "m").exists()
