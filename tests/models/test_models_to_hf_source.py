"""``to_hf(copy_from=SRC)`` keeps every tensor and side file of the source (issue 26 item 3)."""

import json
from pathlib import Path

import jax
import numpy as np

import jaxparams as jp
from jaxparams.cli.main import main

FIX = Path(__file__).resolve().parents[1] / "fixtures"
SIDE = {"tokenizer.json": "{}", "tokenizer_config.json": "{}", "modules.json": "[]",
        "sentence_bert_config.json": "{}", "1_Pooling/config.json": "{}"}


def _bert_with_buffers(folder: Path) -> dict:
  """``peft_bert_tiny`` plus the ``embeddings.position_ids`` buffer and side files, as a real
  sentence-transformers BERT folder has them."""
  tensors = dict(jp.io.load_safetensors(FIX / "peft_bert_tiny"))
  cfg = json.loads((FIX / "peft_bert_tiny" / "config.json").read_text())
  tensors["embeddings.position_ids"] = np.arange(cfg["max_position_embeddings"],
                                                 dtype=np.int64)[None]
  jp.io.save_safetensors(tensors, folder, config=cfg)
  for name, text in SIDE.items():
    (folder / name).parent.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
  return tensors


def test_to_hf_keeps_buffers_and_side_files_and_the_variant_merges(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXPARAMS_COMPILE_CACHE", "none")
  src, out = tmp_path / "src", tmp_path / "variant"
  tensors = _bert_with_buffers(src)
  _, params, cfg = jp.models.from_hf(src)
  params = jax.tree.map(lambda x: x * 2, params)  # a variant made with the library
  jp.models.to_hf(params, cfg, out, copy_from=src)
  written = jp.io.load_safetensors(out)
  assert set(written) == set(tensors)
  np.testing.assert_array_equal(written["embeddings.position_ids"],
                                tensors["embeddings.position_ids"])
  assert written["embeddings.position_ids"].dtype == np.int64
  np.testing.assert_allclose(written["embeddings.word_embeddings.weight"],
                             2 * tensors["embeddings.word_embeddings.weight"], rtol=1e-6)
  for name, text in SIDE.items():
    assert (out / name).read_text() == text, name
  # The variant merges with its original (mergekit refuses different tensor sets).
  (tmp_path / "r.yml").write_text(f"merge_method: linear\nmodels:\n  - model: {src}\n"
                                  f"    parameters: {{weight: 0.5}}\n  - model: {out}\n"
                                  "    parameters: {weight: 0.5}\n")
  assert main(["merge", str(tmp_path / "r.yml"), str(tmp_path / "m"), "-q"]) == 0
  merged = jp.io.load_safetensors(tmp_path / "m")
  np.testing.assert_allclose(merged["embeddings.word_embeddings.weight"],
                             1.5 * tensors["embeddings.word_embeddings.weight"], rtol=1e-6)


def test_to_hf_writes_a_stored_tied_copy_with_the_new_value(tmp_path):
  src, out = tmp_path / "src", tmp_path / "out"
  tensors = dict(jp.io.load_safetensors(FIX / "llama_tiny_tied"))
  cfg = json.loads((FIX / "llama_tiny_tied" / "config.json").read_text())
  assert cfg["tie_word_embeddings"]
  tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()  # stored tied copy
  jp.io.save_safetensors(tensors, src, config=cfg)
  _, params, config = jp.models.from_hf(src)
  params = jax.tree.map(lambda x: x + 1, params)
  jp.models.to_hf(params, config, out, copy_from=src)
  written = jp.io.load_safetensors(out)
  assert set(written) == set(tensors)
  np.testing.assert_array_equal(written["lm_head.weight"], written["model.embed_tokens.weight"])
  np.testing.assert_allclose(written["lm_head.weight"], tensors["lm_head.weight"] + 1, rtol=1e-6)


def test_to_hf_without_copy_from_writes_the_model_only(tmp_path):
  src = tmp_path / "src"
  _bert_with_buffers(src)
  _, params, cfg = jp.models.from_hf(src)
  jp.models.to_hf(params, cfg, tmp_path / "bare")
  assert "embeddings.position_ids" not in jp.io.load_safetensors(tmp_path / "bare")
  assert not (tmp_path / "bare" / "tokenizer.json").exists()
