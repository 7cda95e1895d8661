"""OmniQuant: LWC at clipping 1.0 is min-max RTN, LET folds exactly, block training learns."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams import tree as jtree
from jaxparams.quant import checkpoint as C
from jaxparams.quant import stream
from jaxparams.quant.methods import get_record, make_config, quantize_matrix
from jaxparams.quant.rtn import RTNConfig, rtn

om = importlib.import_module("jaxparams.quant.omniquant")  # the package exports the function


@pytest.mark.parametrize("bits,group,sym", [(4, 32, False), (3, 16, False), (2, 64, False),
                                            (4, 32, True), (8, -1, False)])
def test_lwc_at_clipping_one_is_minmax_rtn(bits, group, sym):
  w = jax.random.normal(jax.random.key(bits), (128, 24)) * jnp.linspace(0.1, 3.0, 24)
  g = 128 if group == -1 else group
  big = jnp.full((128 // g, 24), 50.0)            # sigmoid(50) == 1.0 in float32
  assert float(jax.nn.sigmoid(big[0, 0])) == 1.0
  qa = om.lwc_qarray(w, big, big, bits=bits, group_size=g, symmetric=sym)
  ref = rtn(w, RTNConfig(bits=bits, group_size=group, symmetric=sym))
  np.testing.assert_array_equal(np.asarray(qa.codes), np.asarray(ref.codes))
  np.testing.assert_array_equal(np.asarray(qa.scale), np.asarray(ref.scale))
  np.testing.assert_array_equal(np.asarray(qa.zero), np.asarray(ref.zero))
  fake = om.lwc_fake(w, big, big, bits=bits, group_size=g, symmetric=sym)
  np.testing.assert_array_equal(np.asarray(fake), np.asarray(ref.dequantize(jnp.float32)))


def test_lwc_init_and_gradient_through_clipped_group():
  assert abs(float(jax.nn.sigmoid(4.0)) - 0.982014) < 1e-6
  w = jax.random.normal(jax.random.key(0), (32, 4))
  t = jnp.full((1, 4), 4.0)
  loss = lambda a, b: jnp.sum((om.lwc_fake(w, a, b, bits=3, group_size=32) - w) ** 2)
  ga, gb = jax.grad(loss, argnums=(0, 1))(t, t)
  assert np.all(np.asarray(ga) != 0) and np.all(np.asarray(gb) != 0)


def _block(nh=4, nkv=2, seed=0):
  cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=64, intermediate_size=96,
                              num_hidden_layers=1, num_attention_heads=nh,
                              num_key_value_heads=nkv)
  block = jp.models.llama.LlamaBlock(cfg)
  x = jax.random.normal(jax.random.key(seed), (2, 12, 64))
  mask = jnp.tril(jnp.ones((12, 12), bool))[None].repeat(2, 0)
  pos = jnp.arange(12)[None].repeat(2, 0)
  params = block.init(jax.random.key(seed + 1), x, mask, pos)["params"]
  flat = jtree.flatten(params)
  ks = jax.random.split(jax.random.key(seed + 2), len(flat))
  flat = {p: (v * jnp.exp(0.3 * jax.random.normal(k, v.shape)) if v.ndim == 1 else v)
          for (p, v), k in zip(flat.items(), ks)}       # non-trivial norm weights
  return block, flat, (x, mask, pos)


@pytest.mark.parametrize("nkv", [2])      # grouped-query: v->o scales repeat over q heads
def test_let_fold_preserves_the_block_function(nkv):
  block, flat, args = _block(nkv=nkv)
  pairs = om.let_pairs(flat)
  assert sorted(p.kind for p in pairs) == ["norm", "norm", "vo"]
  rng = np.random.default_rng(nkv)
  scales = {p.src: jnp.asarray(np.exp(rng.normal(0, 1.0, flat[p.dst[0]].shape[0]
                                                  if p.kind == "norm" else
                                                  flat[p.src].shape[1])), jnp.float32)
            for p in pairs}
  folded = om.let_fold(flat, pairs, scales, head_dim=16)
  for p in pairs:                               # the fold really changed the weights
    assert float(jnp.max(jnp.abs(folded[p.dst[0]] - flat[p.dst[0]]))) > 0.1
  f = lambda fl: block.apply({"params": jtree.unflatten(fl)}, *args)
  ref, got = f(flat), f(folded)
  err = float(jnp.max(jnp.abs(got - ref)) / jnp.max(jnp.abs(ref)))
  assert err <= 1e-5, err
  # an untied scale on the q/k pair under RoPE would not be exact: the check can fail
  bad = dict(flat)
  s = jnp.asarray(np.exp(rng.normal(0, 2.0, flat["attn/k_proj/kernel"].shape[1])), jnp.float32)
  bad["attn/k_proj/kernel"] = flat["attn/k_proj/kernel"] * s
  sq = jnp.repeat(s.reshape(nkv, 16), 4 // nkv, axis=0).reshape(-1)   # q head h -> kv h // g
  bad["attn/q_proj/kernel"] = flat["attn/q_proj/kernel"] / sq
  assert float(jnp.max(jnp.abs(f(bad) - ref)) / jnp.max(jnp.abs(ref))) > 1e-4


@pytest.mark.slow
def test_block_training_lowers_the_loss_and_beats_rtn():
  block, flat, (x, mask, pos) = _block(seed=3)
  flat = {p: v * 4.0 if v.ndim == 2 else v for p, v in flat.items()}   # trained-model scale
  states = [((x[i:i + 1], mask[i:i + 1], pos[i:i + 1]), {}) for i in range(2)]
  f = jax.jit(lambda fl, a: block.apply({"params": jtree.unflatten(fl)}, *a))
  targets = [f(flat, a) for a, _ in states]
  kernels = [p for p in flat if p.endswith("kernel")]
  for let in (True,):        # LWC and LET together (LWC alone: the streaming test)
    cfg = om.OmniQuantConfig(bits=3, group_size=16, epochs=25, let=let)
    res = om.omniquant_block(block, flat, {p: cfg for p in kernels}, states, targets)
    assert res.losses[-1] < 0.95 * res.losses[0], res.losses
    assert all(b < a for a, b in zip(res.losses[2::4], res.losses[6::4])), res.losses
    rtn_fl = dict(flat)
    for p in kernels:
      rtn_fl[p] = rtn(flat[p], RTNConfig(bits=3, group_size=16)).dequantize(jnp.float32)
    err = lambda fl: float(sum(jnp.mean((f(fl, a) - y) ** 2) for (a, _), y in zip(states,
                                                                                 targets)))
    assert err(res.params) < err(rtn_fl)
    assert set(res.qarrays) == set(kernels)
    assert (set(res.changed) == {"input_layernorm/scale", "post_attention_layernorm/scale"}
            if let else not res.changed)


def test_record_per_matrix_beats_rtn_on_output_error():
  assert "omniquant" in jp.quant.quantizer_names() and get_record("omniquant").info["block"]
  w = jax.random.normal(jax.random.key(0), (64, 16))
  x = jax.random.normal(jax.random.key(1), (512, 64)) * jnp.linspace(0.2, 4.0, 64)
  h = x.T @ x
  qa = quantize_matrix("omniquant", w, make_config("omniquant", bits=3, group_size=32), h)
  ref = rtn(w, RTNConfig(bits=3, group_size=32)).dequantize(jnp.float32)
  e = lambda d: float(jnp.sum(d * (h @ d)))
  assert e(qa.dequantize(jnp.float32) - w) < e(ref - w)
  with pytest.raises(ValueError, match="valid"):
    make_config("omniquant", lr=1.0)


def _tiny_hf(tmp_path):
  cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=2, num_attention_heads=2)
  params = jax.jit(jp.models.Llama(cfg).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  jp.models.to_hf(params["params"], cfg, tmp_path / "src")
  rng = np.random.default_rng(0)
  batches = [{"input_ids": rng.integers(0, 32, (2, 16)).astype(np.int32)} for _ in range(2)]
  return cfg, batches


@pytest.mark.slow
@pytest.mark.parametrize("fmt,let", [("jaxparams", True), ("gptq", False)])
def test_streaming_quantize_checkpoint_omniquant(tmp_path, fmt, let):
  cfg, batches = _tiny_hf(tmp_path)
  rules = [("**", ("omniquant", {"bits": 4, "group_size": 16, "epochs": 2, "let": let}))]
  out = tmp_path / "q"
  rep = stream.quantize_checkpoint(tmp_path / "src", out, rules, calibration=batches, fmt=fmt)
  assert rep.num_quantized == 14 and {e.method for e in rep.quantized()} == {"omniquant"}
  deq = tmp_path / "deq"
  stream.dequantize_checkpoint(out, deq)
  module, params, _ = jp.models.from_hf(deq)
  _, src, _ = jp.models.from_hf(tmp_path / "src")
  ids = jnp.asarray(batches[0]["input_ids"])
  a, b = module.apply({"params": params}, ids), module.apply({"params": src}, ids)
  assert float(jnp.max(jnp.abs(a - b))) < 0.5 * float(jnp.max(jnp.abs(b)))
  norm_changed = not np.array_equal(np.asarray(params["layers_0"]["input_layernorm"]["scale"]),
                                    np.asarray(src["layers_0"]["input_layernorm"]["scale"]))
  assert norm_changed == let
  if fmt == "jaxparams":
    flat, _ = C.load_quantized_flat(out)
    assert C.is_quant(flat["model.layers.0.self_attn.q_proj.weight"])


@pytest.mark.slow
def test_cli_quantize_method_omniquant(tmp_path):
  import argparse
  import json
  from tokenizers import Tokenizer, models, pre_tokenizers
  from jaxparams.cli import quantize as qcli
  _tiny_hf(tmp_path)
  words = "the a cat dog sat on mat rug ran fast".split()
  tok = Tokenizer(models.WordLevel({"[UNK]": 0, **{w: i + 1 for i, w in enumerate(words)}},
                                   unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(tmp_path / "src" / "tokenizer.json"))
  (tmp_path / "cal.txt").write_text("the cat sat on the mat\nthe dog ran fast\na cat ran\n")
  rules = tmp_path / "rules.yml"
  rules.write_text("- pattern: '**'\n  method: omniquant\n  epochs: 1\n  let: true\n")
  parser = argparse.ArgumentParser()
  qcli.add_parser(parser.add_subparsers())
  args = parser.parse_args(["quantize", str(tmp_path / "src"), str(tmp_path / "q"), "--rules",
                            str(rules), "--bits", "3", "--group-size", "16", "--calibration",
                            str(tmp_path / "cal.txt"), "--no-progress"])
  assert args.func(args) == 0
  layout = json.loads((tmp_path / "q" / C.LAYOUT_FILE).read_text())["tensors"]
  assert len(layout) == 14 and {v["method"] for v in layout.values()} == {"omniquant"}
  assert {v["bits"] for v in layout.values()} == {3}
