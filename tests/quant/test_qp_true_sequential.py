"""True-sequential streaming: each stage of a block is calibrated with the earlier stages
quantized (checked against collect_stats on the model with those layers dequantized)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.calib import collect_stats, text_batches
from jaxparams.quant import checkpoint as C
from jaxparams.quant import stream
from jaxparams.quant.gptq import GPTQConfig, gptq

from tests.quant.test_qp_stream import _tiny_hf


@pytest.mark.slow
def test_true_sequential_stage_sees_quantized_earlier_stages(tmp_path):
  _, texts, tok = _tiny_hf(tmp_path, layers=1)
  rules = [("**", ("gptq", {"bits": 3, "group_size": 16}))]
  kw = dict(calibration=texts, batch_size=4, max_length=16)
  stream.quantize_checkpoint(tmp_path / "src", tmp_path / "ts", rules, true_sequential=True, **kw)
  stream.quantize_checkpoint(tmp_path / "src", tmp_path / "bl", rules, **kw)
  ts, _ = C.load_quantized_flat(tmp_path / "ts")
  bl, _ = C.load_quantized_flat(tmp_path / "bl")
  module, params, config = jp.models.from_hf(tmp_path / "src")
  nmap = jp.models.hf.hf_name_map(config)
  hf = lambda p: nmap[p][0]
  first = ["layers_0/attn/q_proj/kernel", "layers_0/attn/k_proj/kernel",
           "layers_0/attn/v_proj/kernel"]
  for p in first:      # the first stage is calibrated on the block's inputs either way
    np.testing.assert_array_equal(np.asarray(ts[hf(p)].codes), np.asarray(bl[hf(p)].codes))
  # o_proj: statistics from the model whose q/k/v are the quantized ones
  flat = jp.tree.flatten(params)
  for p in first:
    flat[p] = ts[hf(p)].dequantize(jnp.float32)
  o = "layers_0/attn/o_proj/kernel"
  st = collect_stats(module, jp.tree.unflatten(flat),
                     text_batches(tok, texts, batch_size=4, max_length=16), paths=[o])[o]
  want = gptq(jp.tree.flatten(params)[o], st, GPTQConfig(bits=3, group_size=16))
  np.testing.assert_array_equal(np.asarray(ts[hf(o)].codes), np.asarray(want.codes))
  assert not np.array_equal(np.asarray(ts[hf(o)].codes), np.asarray(bl[hf(o)].codes))
  # the stages found: q/k/v, o, gate/up, down
  s = {p: type("S", (), {"xtx": jnp.eye(2) * i})() for i, p in enumerate("abcd")}
  s["b"] = s["a"]
  assert stream._stages(list("abcd"), s) == [["a", "b"], ["c"], ["d"]]
