"""Streaming quantization == the in-memory pipeline, block by block; the thin CLI."""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.models  # noqa: F401
from jaxparams import io as jio
from jaxparams.calib import text_batches
from jaxparams.cli import quantize as qcli
from jaxparams.quant import checkpoint as C
from jaxparams.quant import stream
from jaxparams.quant.calibrate import quantize_model
from jaxparams.quant.rules import quantize_tree


def _tiny_hf(tmp_path, layers=3):
  from tokenizers import Tokenizer, models, pre_tokenizers
  cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=layers, num_attention_heads=2)
  params = jax.jit(jp.models.Llama(cfg).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  params = jax.tree.map(lambda a: a * 3.0 if a.ndim == 2 else a, params["params"])
  jp.models.to_hf(params, cfg, tmp_path / "src")
  words = "the a cat dog sat on mat rug ran fast slow big small red blue green".split()
  vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / "src" / "tokenizer.json"))
  rng = np.random.default_rng(0)
  texts = [" ".join(rng.choice(words, int(rng.integers(4, 12)))) for _ in range(8)]
  (tmp_path / "calib.txt").write_text("\n".join(texts))
  return cfg, texts, tok


def _same_as_in_memory(tmp_path, rules, texts, tok, **kw):
  """The streamed checkpoint holds exactly what quantize_model + save_quantized would."""
  out = tmp_path / "stream"
  reads = []
  real = stream._Model.read

  def spy(self, path):
    reads.append(path)
    return real(self, path)

  stream._Model.read = spy
  try:
    rep = stream.quantize_checkpoint(tmp_path / "src", out, rules, calibration=texts,
                                     batch_size=4, max_length=16, **kw)
  finally:
    stream._Model.read = real
  module, params, config = jp.models.from_hf(tmp_path / "src")
  batches = text_batches(tok, texts, batch_size=4, max_length=16)
  q, rep_mem = quantize_model(module, params, rules, batches)
  flat, _ = C.load_quantized_flat(out)
  nmap = jp.models.hf.hf_name_map(config)
  mem = jp.tree.flatten(q, is_leaf=C.is_quant)
  assert len(flat) == len(mem)
  for path, leaf in mem.items():
    got = flat[nmap[path][0]]
    if C.is_quant(leaf):
      for a, b in zip(jax.tree_util.tree_leaves(leaf), jax.tree_util.tree_leaves(got)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    else:
      np.testing.assert_array_equal(np.asarray(leaf).T if nmap[path][1] else np.asarray(leaf),
                                    got, err_msg=path)
  assert rep.num_quantized == rep_mem.num_quantized
  return reads


@pytest.mark.slow
def test_streamed_gptq_equals_in_memory_and_reads_block_by_block(tmp_path):
  _, texts, tok = _tiny_hf(tmp_path)
  rules = [("**/mlp/**", ("awq", {"bits": 4, "group_size": 16})),
           ("**", ("gptq", {"bits": 3, "group_size": 16}))]
  reads = _same_as_in_memory(tmp_path, rules, texts, tok)
  # Blocks are read one after the other: layers_{i+1} only after all of layers_i.
  blocks = [int(p.split("/")[0].split("_")[1]) for p in reads if p.startswith("layers_")]
  assert blocks == sorted(blocks) and set(blocks) == {0, 1, 2}


def test_streamed_data_free_equals_quantize_tree(tmp_path):
  cfg, _, _ = _tiny_hf(tmp_path, layers=2)
  rules = [("**/attn/**", ("hqq", {"bits": 4, "group_size": 16})),
           ("**", ("rtn", {"bits": 3, "group_size": 16}))]
  stream.quantize_checkpoint(tmp_path / "src", tmp_path / "q", rules)
  _, params, config = jp.models.from_hf(tmp_path / "src")
  q, _ = quantize_tree(params, rules)
  flat, _ = C.load_quantized_flat(tmp_path / "q")
  nmap = jp.models.hf.hf_name_map(config)
  for path, leaf in jp.tree.flatten(q, is_leaf=C.is_quant).items():
    if C.is_quant(leaf):
      np.testing.assert_array_equal(np.asarray(leaf.codes), np.asarray(flat[nmap[path][0]].codes))
  # dequantize streams back, with the library's dequantizer (HF weights are dequantize().T).
  info = stream.dequantize_checkpoint(tmp_path / "q", tmp_path / "dq")
  dq = jio.load_safetensors(tmp_path / "dq")
  assert info["dequantized"] == 14 and sorted(dq) == sorted(jio.load_safetensors(tmp_path / "src"))
  name = nmap["layers_1/attn/q_proj/kernel"][0]
  np.testing.assert_array_equal(dq[name], np.asarray(flat[name].dequantize()).T)


def _cli(argv):
  parser = argparse.ArgumentParser()
  qcli.add_parser(parser.add_subparsers())
  args = parser.parse_args(argv)
  return args.func(args)


def test_cli_rules_keep_words_and_fp8(tmp_path):
  _tiny_hf(tmp_path, layers=1)
  rules = tmp_path / "rules.yml"
  rules.write_text("- pattern: '**/attn/**'\n  method: full\n"
                   "- pattern: '**/mlp/up_proj/**'\n  method: fp8\n"
                   "- pattern: '**'\n")
  assert _cli(["quantize", str(tmp_path / "src"), str(tmp_path / "q"), "--rules", str(rules),
               "--group-size", "16", "--no-progress"]) == 0
  layout = json.loads((tmp_path / "q" / C.LAYOUT_FILE).read_text())["tensors"]
  methods = {k.split(".")[-2]: v["method"] for k, v in layout.items()}
  assert methods == {"up_proj": "fp8", "gate_proj": "rtn", "down_proj": "rtn"}
  assert layout["model.layers.0.mlp.up_proj.weight"]["kind"] == "fp8_e4m3"
  assert _cli(["quantize", str(tmp_path / "src"), str(tmp_path / "f"), "--method", "fp8",
               "--group-size", "-1", "--no-progress"]) == 0
  bad = tmp_path / "bad.yml"
  bad.write_text("- pattern: '**'\n  method: rtn\n  bitz: 3\n")
  with pytest.raises(ValueError, match="bitz"):
    _cli(["quantize", str(tmp_path / "src"), str(tmp_path / "o"), "--rules", str(bad)])
  assert not (tmp_path / "o").exists()


def test_cli_gptq_group_size_equal_to_the_width(tmp_path):
  """Issue 25: ``--group-size 32`` on the 32-wide Llama: its K=32 weights are one group, the
  K=64 ones two; quantize_config holds the one group_size a GPTQ loader reads them with."""
  _tiny_hf(tmp_path, layers=1)
  flags = ["--group-size", "32", "--no-progress"]
  assert _cli(["quantize", str(tmp_path / "src"), str(tmp_path / "g"), "--format", "gptq",
               *flags]) == 0
  assert _cli(["quantize", str(tmp_path / "src"), str(tmp_path / "j"), *flags]) == 0
  qc = json.loads((tmp_path / "g" / C.GPTQ_CONFIG_FILE).read_text())
  assert qc["group_size"] == 32
  assert json.loads((tmp_path / "g" / "config.json").read_text())[
      "quantization_config"]["group_size"] == 32
  stored = jio.load_safetensors(tmp_path / "g")
  ks = {n[:-len(".g_idx")]: len(a) for n, a in stored.items() if n.endswith(".g_idx")}
  assert sorted(set(ks.values())) == [32, 64]
  for p, k in ks.items():   # what a GPTQ loader expects of group_size 32
    assert stored[p + ".scales"].shape[0] == -(-k // 32), p
    np.testing.assert_array_equal(stored[p + ".g_idx"], np.arange(k) // 32, err_msg=p)
  stream.dequantize_checkpoint(tmp_path / "g", tmp_path / "gd")
  stream.dequantize_checkpoint(tmp_path / "j", tmp_path / "jd", dtype="float32")
  got, want = jio.load_safetensors(tmp_path / "gd"), jio.load_safetensors(tmp_path / "jd")
  for p in ks:
    tol = 16 * np.abs(stored[p + ".scales"].astype(np.float64)).max() * 2.0 ** -10
    np.testing.assert_allclose(got[p + ".weight"], want[p + ".weight"], rtol=0, atol=tol)


def test_gptq_config_has_one_group_size():
  from jaxparams.quant.rtn import RTNConfig, rtn
  w = jax.random.normal(jax.random.key(0), (64, 8))

  def summary(x, g):
    return C.gptq_summary("w.weight", rtn(x, RTNConfig(bits=4, group_size=g)))

  one_group = summary(w[:32], 32)        # K=32 at group size 32: a single group
  assert C.gptq_config({"l.0.a.weight": one_group,
                        "l.0.b.weight": summary(w, 32)})["group_size"] == 32
  assert C.gptq_config({"l.0.a.weight": summary(w[:32], -1),
                        "l.0.b.weight": summary(w, -1)})["group_size"] == -1
  with pytest.raises(ValueError, match=r"\['l.0.a.weight'\] are quantized per channel over K > 32"):
    C.gptq_config({"l.0.a.weight": summary(w, -1), "l.0.b.weight": summary(w, 32)})
  with pytest.raises(ValueError, match=r"share group_size, got \[16, 32\]"):
    C.gptq_config({"l.0.a.weight": summary(w, 16), "l.0.b.weight": summary(w, 32)})


def test_kept_tensors_keep_the_source_shape_and_dtype(tmp_path, monkeypatch):
  """Issue 25: a tensor kept in full precision is checked for the source's shape and dtype
  (the streaming driver's copy check), not only for finiteness."""
  from jaxparams.transform import prefetch
  _tiny_hf(tmp_path, layers=1)
  rules = [("**", ("rtn", {"bits": 4, "group_size": 16}))]
  real = prefetch.read_tensor

  def bad_read(reader, name, *a, **kw):   # a reader that hands back one norm as float16
    x = real(reader, name, *a, **kw)
    return x.astype(np.float16) if name == "model.norm.weight" else x

  monkeypatch.setattr(prefetch, "read_tensor", bad_read)
  with pytest.raises(ValueError, match="'model.norm.weight' has dtype float16, expected float32"):
    stream.quantize_checkpoint(tmp_path / "src", tmp_path / "q", rules)
  assert not (tmp_path / "q").exists()
  monkeypatch.setattr(prefetch, "read_tensor", real)
  stream.quantize_checkpoint(tmp_path / "src", tmp_path / "q", rules)
  src, out = jio.load_safetensors(tmp_path / "src"), jio.load_safetensors(tmp_path / "q")
  for name in ("model.norm.weight", "model.embed_tokens.weight", "lm_head.weight"):
    assert out[name].shape == src[name].shape and out[name].dtype == src[name].dtype
