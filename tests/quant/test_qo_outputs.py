"""Quantized outputs that other tools load correctly, or refuse (issue 9)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from jaxparams import io as jio
from jaxparams.quant import checkpoint as C
from jaxparams.quant import stream

FIX = Path(__file__).parents[1] / "fixtures"
RTN4 = [("**", ("rtn", {"bits": 4, "group_size": 16}))]
ST_SIDE = {"modules.json": '[{"idx": 0, "name": "0", "path": "", "type": '
                           '"sentence_transformers.models.Transformer"}]',
           "sentence_bert_config.json": '{"max_seq_length": 32}',
           "1_Pooling/config.json": '{"word_embedding_dimension": 32, "pooling_mode_mean_tokens": true}',
           "README.md": "# the source model's own card\n"}


def _bert_src(tmp_path):
  src = tmp_path / "bert"
  shutil.copytree(FIX / "peft_bert_tiny", src)
  for fn, text in ST_SIDE.items():
    (src / fn).parent.mkdir(parents=True, exist_ok=True)
    (src / fn).write_text(text)
  return src


def test_jaxparams_layout_refuses_plain_loaders_has_card_and_still_loads(tmp_path):
  src = _bert_src(tmp_path)
  out = tmp_path / "q"
  rep = stream.quantize_checkpoint(src, out, RTN4)
  cfg = json.loads((out / "config.json").read_text())
  qc = cfg["quantization_config"]
  # transformers raises for a quantization_config without quant_method; an unknown
  # quant_method ("jaxparams") would only warn and load random weights.
  assert "quant_method" not in qc and qc["format"] == "jaxparams.quant"
  assert "jaxparams dequantize" in qc["how_to_load"]
  card = (out / "README.md").read_text()
  assert card != ST_SIDE["README.md"] and "jaxparams dequantize" in card
  assert "| rtn | %d | 4 |" % rep.num_quantized in card
  for fn in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
    assert (out / fn).read_text() == ST_SIDE[fn]
  # our own loader still reads it, and dequantize drops the marker and our card
  flat, _ = C.load_quantized_flat(out)
  assert sum(C.is_quant(v) for v in flat.values()) == rep.num_quantized
  deq = tmp_path / "d"
  stream.dequantize_checkpoint(out, deq)
  assert "quantization_config" not in json.loads((deq / "config.json").read_text())
  assert not (deq / "README.md").exists()   # our card says "quantized": not carried over
  assert (deq / "1_Pooling/config.json").is_file()


# transformers itself refusing this layout is checked by benchmarks/peer_checks.py
# (transformers_refuses_jaxparams_layout), in the peer environment benchmarks/peer_env.sh builds.


# ----------------------------------------------------------------------------- HF GPTQ export
def _words_to_fields(words, bits, count, axis):
  """Published packing: int32 little-endian words, 32/bits fields each, LSB first, along axis."""
  w = np.moveaxis(np.asarray(words).view(np.uint32).astype(np.uint64), axis, 0)
  per = 32 // bits
  f = np.stack([(w >> np.uint64(bits * j)) & np.uint64(2 ** bits - 1) for j in range(per)], 1)
  f = f.reshape((w.shape[0] * per,) + w.shape[1:])[:count]
  return np.moveaxis(f, 0, axis).astype(np.int64)


def _reference_gptq_weights(folder):
  """Independent decoder of an HF GPTQ folder (4-bit): {'<p>.weight': W[out, in] float64}."""
  qc = json.loads((folder / "config.json").read_text())["quantization_config"]
  fmt = qc.get("checkpoint_format", "gptq")
  t = jio.load_safetensors(folder)
  out = {}
  for name in t:
    if not name.endswith(".qweight"):
      continue
    p = name[:-len(".qweight")]
    k, n = t[name].shape[0] * 8, t[name].shape[1]
    q = _words_to_fields(t[name], 4, k, 0)                    # [in, out]
    z = _words_to_fields(t[p + ".qzeros"], 4, n, 1)           # [groups, out]
    if fmt == "gptq":
      z = z + 1                                               # v1 stores zero - 1; readers add 1
    g = t[p + ".g_idx"]
    s = t[p + ".scales"].astype(np.float64)
    out[p + ".weight"] = ((q - z[g]) * s[g]).T
  return out, qc, t


@pytest.mark.parametrize("arch", ["bert", "llama"])
def test_gptq_export_asymmetric_decodes_like_ours_with_block_names(tmp_path, arch):
  if arch == "bert":
    src, block = _bert_src(tmp_path), "encoder.layer"
    forced = "encoder.layer.0.attention.self.query.weight"
  else:
    src, block = tmp_path / "llama", "model.layers"
    shutil.copytree(FIX / "llama_tiny", src)
    forced = "model.layers.0.self_attn.q_proj.weight"
  # one weight >= 0 everywhere: asymmetric zero points of 0, which the v1 format overflows
  t = jio.load_safetensors(src)
  t[forced] = np.abs(t[forced])
  jio.write_safetensors_file(src / "model.safetensors", t)
  stream.quantize_checkpoint(src, tmp_path / "g", RTN4, fmt="gptq")
  stream.quantize_checkpoint(src, tmp_path / "j", RTN4)
  ref, qc, stored = _reference_gptq_weights(tmp_path / "g")
  assert qc["checkpoint_format"] == "gptq_v2" and qc["sym"] is False
  assert qc["block_name_to_quantize"] == block
  mods = qc["modules_in_block_to_quantize"][0]
  for w in ref:   # every quantized weight is a block module the loader will replace
    assert w.startswith(block + ".") and any(w[:-len(".weight")].endswith(m) for m in mods)
  z0 = _words_to_fields(stored[forced[:-len("weight")] + "qzeros"], 4, 10**9, 1)
  assert (z0 == 0).any()
  stream.dequantize_checkpoint(tmp_path / "j", tmp_path / "jd", dtype="float32")
  ours = jio.load_safetensors(tmp_path / "jd")
  stream.dequantize_checkpoint(tmp_path / "g", tmp_path / "gd")
  ours_g = jio.load_safetensors(tmp_path / "gd")
  assert len(ref) > 0
  for name, w in ref.items():
    s = stored[name[:-len("weight")] + "scales"].astype(np.float64)
    tol = 16 * np.abs(s).max() * 2.0 ** -10        # fp16 scales vs our fp32 ones
    np.testing.assert_allclose(w, ours[name], rtol=0, atol=tol, err_msg=name)
    np.testing.assert_allclose(w, ours_g[name], rtol=0, atol=1e-6, err_msg=name)
  if arch == "bert":
    for fn in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json"):
      assert (tmp_path / "g" / fn).read_text() == ST_SIDE[fn]


def test_gptq_v1_refuses_zero_point_zero():
  import jax.numpy as jnp
  from jaxparams.quant.rtn import RTNConfig, rtn
  qa = rtn(jnp.abs(jnp.arange(64 * 8, dtype=jnp.float32).reshape(64, 8)) + 1,
           RTNConfig(bits=4, group_size=16))
  assert float(qa.zero.min()) == 0
  with pytest.raises(ValueError, match="gptq_v2"):
    C.gptq_encode("l.weight", qa, checkpoint_format="gptq")
  v2 = C.gptq_encode("l.weight", qa, checkpoint_format="gptq_v2")
  assert (_words_to_fields(v2["l.qzeros"], 4, 8, 1) == np.asarray(qa.zero)).all()


# ----------------------------------------------------------------------------- dequantize
def test_dequantize_gptq_keeps_original_dtype_and_position_ids(tmp_path, capsys):
  from jaxparams.cli.main import main
  src = _bert_src(tmp_path)
  cfg = json.loads((src / "config.json").read_text())
  cfg.pop("dtype", None)
  cfg.pop("torch_dtype", None)                 # as all-MiniLM-L6-v2: no dtype in config.json
  (src / "config.json").write_text(json.dumps(cfg))
  t = jio.load_safetensors(src)
  t["embeddings.position_ids"] = np.arange(32, dtype=np.int64)[None]
  jio.write_safetensors_file(src / "model.safetensors", t)
  for fmt in ("gptq", "jaxparams"):
    q, d = tmp_path / f"q_{fmt}", tmp_path / f"d_{fmt}"
    assert main(["quantize", str(src), str(q), "--bits", "4", "--group-size", "16",
                 "--format", fmt, "--no-progress"]) == 0
    assert main(["dequantize", str(q), str(d)]) == 0
    back = jio.load_safetensors(d)
    assert set(back) == set(t), fmt
    for name, a in t.items():
      assert back[name].dtype == a.dtype, (fmt, name, back[name].dtype)
    np.testing.assert_array_equal(back["embeddings.position_ids"], t["embeddings.position_ids"])
  capsys.readouterr()
  assert main(["dequantize", str(tmp_path / "q_gptq"), str(tmp_path / "bad"),
               "--dtype", "float99"]) == 2
  err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
  assert len(err) == 1 and "float99" in err[0] and "--dtype" in err[0], err
  assert not (tmp_path / "bad").exists()
  assert main(["dequantize", str(tmp_path / "q_gptq"), str(tmp_path / "bf"), "--dtype", "bf16"]) == 0
  w = jio.load_safetensors(tmp_path / "bf")["encoder.layer.0.attention.self.query.weight"]
  assert w.dtype.name == "bfloat16"


# ----------------------------------------------------------------------------- CLI flags
@pytest.mark.parametrize("method,flag", [("hqq", "--symmetric"), ("decoupleq", "--symmetric"),
                                         ("rtn", "--act-order"), ("hqq", "--act-order"),
                                         ("awq", "--act-order"), ("nf4", "--act-order")])
def test_cli_refuses_flags_a_method_does_not_have(tmp_path, capsys, method, flag):
  from jaxparams.cli.main import main
  out = tmp_path / "q"
  assert main(["quantize", str(FIX / "llama_tiny"), str(out), "--method", method, flag,
               "--no-progress"]) == 2
  err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
  assert len(err) == 1 and flag in err[0] and method in err[0], err
  assert not out.exists()


def test_cli_flags_apply_where_the_method_has_them():
  from jaxparams.quant.rule_file import flag_fields
  from jaxparams.quant.rules import parse_spec
  for method, kw, field in [("rtn", {"symmetric": True}, "symmetric"),
                            ("awq", {"symmetric": True}, "symmetric"),
                            ("gptq", {"act_order": True}, "act_order"),
                            ("decoupleq", {"act_order": True}, "act_order")]:
    fields = flag_fields(method, 4, 32, **kw)
    assert getattr(parse_spec((method, fields))[1], field) is True, method


def test_save_quantized_with_config_is_marked_too(tmp_path):
  import jax
  from jaxparams.quant.rtn import RTNConfig, rtn
  qa = rtn(jax.random.normal(jax.random.key(0), (64, 8)), RTNConfig(bits=4, group_size=32))
  C.save_quantized({"l.weight": qa}, tmp_path / "q", config={"model_type": "llama"},
                   methods={"l.weight": "rtn"})
  qc = json.loads((tmp_path / "q" / "config.json").read_text())["quantization_config"]
  assert "quant_method" not in qc and qc["format"] == "jaxparams.quant"
  assert "| rtn | 1 |" in (tmp_path / "q" / "README.md").read_text()
  assert C.is_quant(C.load_quantized_flat(tmp_path / "q")[0]["l.weight"])
