"""Quantized outputs that other tools load correctly, or refuse (issue 9)."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from jaxparams import io as jio
from jaxparams.quant import checkpoint as C
from jaxparams.quant import stream

FIX = Path(__file__).parents[1] / "fixtures"
TORCH_PY = Path("/work/torchvenv/bin/python")
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


@pytest.mark.slow
@pytest.mark.skipif(not TORCH_PY.is_file(), reason="needs the torch venv /work/torchvenv")
def test_transformers_refuses_jaxparams_layout(tmp_path):
  out = tmp_path / "q"
  stream.quantize_checkpoint(_bert_src(tmp_path), out, RTN4)
  code = ("import sys\nfrom transformers import AutoModel\n"
          "try:\n  AutoModel.from_pretrained(sys.argv[1])\nexcept ValueError as e:\n"
          "  print('REFUSED', e); sys.exit(0)\nprint('LOADED'); sys.exit(1)\n")
  r = subprocess.run([str(TORCH_PY), "-c", code, str(out)], capture_output=True, text=True,
                     timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
  assert r.returncode == 0 and "REFUSED" in r.stdout and "quant_method" in r.stdout, r.stdout + r.stderr
