"""Quantized reference models run unchanged through `dot`; the quantize/dequantize CLI."""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.models  # noqa: F401
from jaxparams import io as jio
from jaxparams.cli import dequantize as dcli
from jaxparams.cli import quantize as qcli
from jaxparams.quant import checkpoint as C
from jaxparams.quant import rules as qrules
from jaxparams.quant.dot import dot
from jaxparams.quant.qarray import QArray

is_q = lambda x: isinstance(x, QArray)


def _dense(params):
  return jax.tree.map(lambda x: x.dequantize() if is_q(x) else x, params, is_leaf=is_q)


@pytest.mark.parametrize("arch", ["llama", "bert"])
def test_quantized_models_run_unchanged_with_qarray_weights(arch):
  if arch == "llama":
    cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2)
    make = lambda d=None: jp.models.Llama(cfg, dot=d)
  else:
    cfg = jp.models.BertConfig(vocab_size=32, hidden_size=32, num_hidden_layers=1,
                               num_attention_heads=2, intermediate_size=32,
                               max_position_embeddings=16)
    make = lambda d=None: jp.models.Bert(cfg, dot=d)
  ids = jax.random.randint(jax.random.key(3), (2, 8), 0, 32)
  params = jax.jit(make().init)(jax.random.key(0), ids)["params"]
  q, report = qrules.quantize_tree(params, [("**/mlp/**", ("nf4", {"block_size": 16})),
                                            ("**", ("rtn", {"bits": 4, "group_size": 16}))])
  assert report.num_quantized == (7 if arch == "llama" else 6)
  y_q = jax.jit(make(dot).apply)({"params": q}, ids)
  apply = jax.jit(make().apply)
  y_ref = apply({"params": _dense(q)}, ids)
  np.testing.assert_allclose(np.asarray(y_q), np.asarray(y_ref), rtol=1e-4, atol=1e-4)
  y_fp = apply({"params": params}, ids)
  assert not np.allclose(np.asarray(y_q), np.asarray(y_fp), atol=1e-4)  # really quantized


def _tiny_hf(tmp_path):
  from tokenizers import Tokenizer, models, pre_tokenizers
  cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=32,
                              num_hidden_layers=2, num_attention_heads=2)
  params = jax.jit(jp.models.Llama(cfg).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  jp.models.to_hf(params["params"], cfg, tmp_path / "src")
  words = "the a cat dog sat on mat rug ran fast slow big small red blue green".split()
  vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(words)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / "src" / "tokenizer.json"))
  rng = np.random.default_rng(0)
  (tmp_path / "calib.txt").write_text("\n".join(" ".join(rng.choice(words, 10))
                                                for _ in range(8)))
  return cfg


def _cli(argv):
  parser = argparse.ArgumentParser()
  sub = parser.add_subparsers()
  qcli.add_parser(sub)
  dcli.add_parser(sub)
  args = parser.parse_args(argv)
  return args.func(args)


def test_cli_quantize_then_dequantize(tmp_path):
  _tiny_hf(tmp_path)
  src, q, dq = tmp_path / "src", tmp_path / "q", tmp_path / "dq"
  assert _cli(["quantize", str(src), str(q), "--method", "gptq", "--bits", "4", "--group-size",
               "16", "--calibration", str(tmp_path / "calib.txt"), "--no-progress"]) == 0
  report = json.loads((q / "quant_report.json").read_text())
  assert report["num_quantized"] == 14
  flat, layout = C.load_quantized_flat(q)
  assert layout["tensors"]["model.layers.0.mlp.up_proj.weight"]["transpose"] is True
  assert _cli(["dequantize", str(q), str(dq)]) == 0
  src_t, dq_t = jio.load_safetensors(src), jio.load_safetensors(dq)
  assert sorted(src_t) == sorted(dq_t)
  for name, a in dq_t.items():
    assert a.shape == src_t[name].shape and a.dtype == src_t[name].dtype
    if is_q(flat[name]):
      np.testing.assert_array_equal(a, np.asarray(flat[name].dequantize()).T)
    else:
      np.testing.assert_array_equal(a, src_t[name])
  assert json.loads((dq / "config.json").read_text()) == json.loads((src / "config.json").read_text())
  module, dparams, _ = jp.models.from_hf(dq)   # any tool can read it
  # The GPTQ layout through the CLI, and back.
  assert _cli(["quantize", str(src), str(tmp_path / "g"), "--method", "rtn", "--bits", "4",
               "--group-size", "16", "--format", "gptq", "--no-progress"]) == 0
  assert (tmp_path / "g" / "quantize_config.json").is_file()
  assert _cli(["dequantize", str(tmp_path / "g"), str(tmp_path / "dg")]) == 0
  assert sorted(jio.load_safetensors(tmp_path / "dg")) == sorted(src_t)


def test_cli_bad_inputs(tmp_path):
  _tiny_hf(tmp_path)
  src = str(tmp_path / "src")
  with pytest.raises(ValueError, match="--calibration"):
    _cli(["quantize", src, str(tmp_path / "o1"), "--method", "awq", "--no-progress"])
  rules = tmp_path / "rules.yml"
  rules.write_text("- pattern: '**/attn/**'\n  method: keep\n- pattern: '**/mlp/gate/**'\n")
  with pytest.raises(ValueError, match="mlp/gate"):
    _cli(["quantize", src, str(tmp_path / "o2"), "--rules", str(rules), "--group-size", "16",
          "--no-progress"])
  with pytest.raises(ValueError, match="nf4 is 4-bit only"):
    _cli(["quantize", src, str(tmp_path / "o3"), "--method", "nf4", "--bits", "3"])
  with pytest.raises(ValueError, match="not a quantized checkpoint"):
    _cli(["dequantize", src, str(tmp_path / "o4")])
  for o in ("o1", "o2", "o3", "o4"):
    assert not (tmp_path / o).exists()
