"""RF8 as a quantizer record and QArray kind: exact codes, tree, checkpoint and CLI round trips."""

import json
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.quant import checkpoint as C
from jaxparams.quant.rf8 import (BINADES, SIGNIFICANDS, RF8Config, rf8_decode, rf8_encode,
                                 rf8_encode_with, rf8_round)


def _reference_round(w):
  """The reference ``rf8(model, n=4)`` transcribed in float64 numpy (independent of ours)."""
  w = np.asarray(w, np.float64)
  out = np.zeros_like(w)
  for i, x in enumerate(w.ravel()):
    if x == 0:
      continue
    e1 = np.round(np.log2(abs(x)))
    d1 = np.sign(x) * 2.0 ** e1
    r = x - d1
    if r == 0:
      out.flat[i] = d1
      continue
    e2 = np.round(np.log2(abs(r)))
    out.flat[i] = d1 + np.sign(r) * 2.0 ** e2 if e1 - e2 <= 4 else d1
  return out


def test_value_set_is_the_references_and_every_value_is_exact():
  # The reference rounding of a dense grid of one binade yields exactly our 7 significands.
  grid = np.linspace(1.0, 2.0, 4001)[:-1]
  got = np.unique(_reference_round(grid * 8.0) / 8.0)
  vals = set(np.round(got, 10)) - {2.0}
  assert vals == set(SIGNIFICANDS.astype(np.float64))
  # Every code decodes to a representable value that encodes back to the same code.
  codes = np.array([c for c in range(256) if (c & 0x7F) not in (0, 127)], np.uint8)
  top = np.array([0x7E], np.uint8)                       # the largest magnitude fixes b_low
  for b_low in (-20, -3, 5):
    all_c = jnp.asarray(np.concatenate([top, codes]))
    v = rf8_decode(all_c, jnp.int32(b_low))
    np.testing.assert_array_equal(np.asarray(rf8_round(v)), np.asarray(v))      # fixed points
    back, b = rf8_encode(v)
    assert int(b) == b_low
    np.testing.assert_array_equal(np.asarray(back), np.asarray(all_c))
  mags = np.asarray(rf8_decode(jnp.arange(1, 127, dtype=jnp.uint8), jnp.int32(0)))
  assert np.all(np.diff(mags) > 0)                       # codes sort as magnitudes
  assert np.isnan(float(rf8_decode(jnp.uint8(127), jnp.int32(0))))


def test_rounding_matches_reference_and_codes_round_trip():
  w = jp.prune.gg_sample(jax.random.key(0), (4000,), nu=0.7, beta=0.05)
  r = np.asarray(rf8_round(w))
  np.testing.assert_array_equal(r, _reference_round(np.asarray(w)).astype(np.float32))
  codes, b_low = rf8_encode(w)
  dec = np.asarray(rf8_decode(codes, b_low))
  kept = np.abs(r) >= 2.0 ** int(b_low)
  np.testing.assert_array_equal(dec[kept], r[kept])
  assert (dec[~kept] == 0).all() and kept.mean() > 0.99
  assert int(b_low) == int(np.floor(np.log2(np.abs(r).max()))) - (BINADES - 1)
  assert rf8_encode_with(jnp.array([1e30]), jnp.int32(0)).tolist() == [126]   # clipped, no wrap


@pytest.mark.parametrize("group_size", [-1, 16])
def test_quantizer_record_per_group_scales(group_size):
  w = jp.prune.gg_sample(jax.random.key(1), (64, 8), nu=1.0, beta=0.02)
  w = w.at[:, 3].multiply(1000.0)                        # one channel 1000x larger: own scale
  qa = jp.quant.quantize_matrix("rf8", w, jp.quant.make_config("rf8", group_size=group_size))
  g = 64 if group_size == -1 else group_size
  assert (qa.kind, qa.bits, qa.group_size, qa.codes.dtype) == ("rf8", 8, g, jnp.uint8)
  assert qa.scale.shape == (64 // g, 8) and qa.zero is None
  s = np.asarray(qa.scale)
  np.testing.assert_array_equal(s, 2.0 ** np.round(np.log2(s)))       # powers of two
  np.testing.assert_array_equal(np.asarray(qa.dequantize()), np.asarray(rf8_round(w)))
  with pytest.raises(ValueError, match="bits"):
    jp.quant.make_config("rf8", bits=4)
  from jaxparams.quant import rule_file
  with pytest.raises(ValueError, match="rf8 is 8-bit only"):
    rule_file.flag_fields("rf8", 3, -1)


def test_quantize_tree_and_checkpoint_round_trip(tmp_path):
  params = {"dense": {"kernel": jp.prune.gg_sample(jax.random.key(2), (32, 16), nu=1.0,
                                                   beta=0.1)},
            "out": {"kernel": jax.random.normal(jax.random.key(3), (16, 4))}}
  q, _ = jp.quant.quantize_tree(params, [("**/kernel", ("rf8", RF8Config(group_size=8)))],
                                keep=())
  assert q["dense"]["kernel"].kind == "rf8"
  C.save_quantized(q, tmp_path / "q")
  back = C.load_quantized(tmp_path / "q")
  for k in ("dense", "out"):
    np.testing.assert_array_equal(np.asarray(back[k]["kernel"].codes),
                                  np.asarray(q[k]["kernel"].codes))
    np.testing.assert_array_equal(np.asarray(back[k]["kernel"].dequantize()),
                                  np.asarray(rf8_round(params[k]["kernel"])))
  layout = json.loads((tmp_path / "q" / C.LAYOUT_FILE).read_text())["tensors"]
  assert layout["dense/kernel"]["kind"] == "rf8"


def test_cli_quantize_and_dequantize_rf8(tmp_path):
  cfg = jp.models.LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64,
                              num_hidden_layers=1, num_attention_heads=2)
  params = jax.jit(jp.models.Llama(cfg).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  jp.models.to_hf(params["params"], cfg, tmp_path / "src")
  from jaxparams.cli.main import main
  assert main(["quantize", str(tmp_path / "src"), str(tmp_path / "q"), "--method", "rf8",
               "--group-size", "-1", "--no-progress"]) == 0
  layout = json.loads((tmp_path / "q" / C.LAYOUT_FILE).read_text())["tensors"]
  name = "model.layers.0.mlp.up_proj.weight"
  assert layout[name]["kind"] == "rf8" and layout[name]["method"] == "rf8"
  assert main(["dequantize", str(tmp_path / "q"), str(tmp_path / "d")]) == 0
  from safetensors.numpy import load_file
  src, out = load_file(tmp_path / "src" / "model.safetensors"), load_file(
      tmp_path / "d" / "model.safetensors")
  np.testing.assert_array_equal(out[name], np.asarray(rf8_round(src[name])))
  emb = "model.embed_tokens.weight"
  np.testing.assert_array_equal(out[emb], src[emb])     # kept in full precision
