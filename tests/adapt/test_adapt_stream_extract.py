"""``jaxparams lora merge|extract`` on HF folders, against PEFT's merge and mergekit-extract-lora."""

import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
from jaxparams.cli.main import main

FIX = Path(__file__).resolve().parents[1] / "fixtures"
sys.path.insert(0, str(FIX))
from peft_finetuned import finetuned  # noqa: E402


@pytest.fixture(scope="module")
def outputs():
  return np.load(FIX / "peft_outputs.npz")


@pytest.mark.parametrize("name,base", [("llama_rslora", "llama_tiny"), ("llama_dora", "llama_tiny"),
                                       ("bert_lora", "peft_bert_tiny"),
                                       ("bert_bias_all", "peft_bert_tiny")])
def test_cli_merge_equals_peft_merge_and_unload(name, base, outputs, tmp_path, capsys):
  out = tmp_path / "merged"
  assert main(["lora", "merge", str(FIX / base), str(FIX / f"peft_{name}"), str(out)]) == 0
  assert "merged" in capsys.readouterr().out
  merged = jp.io.load_safetensors(out)
  orig = jp.io.load_safetensors(FIX / base)
  assert set(merged) == set(orig)
  assert json.loads((out / "config.json").read_text()) == json.loads(
      (FIX / base / "config.json").read_text())
  prefix = f"{name}/merged/"
  keys = [k for k in outputs.files if k.startswith(prefix)]
  for k in keys:
    np.testing.assert_allclose(merged[k[len(prefix):]], outputs[k], rtol=1e-6, atol=1e-6, err_msg=k)
  ad = jp.adapt.read_peft(FIX / f"peft_{name}")
  untouched = [n for n in orig if n.rsplit(".", 1)[0] not in ad.modules
               and n not in ad.modules_to_save]
  assert untouched and all(np.array_equal(merged[n], orig[n]) for n in untouched)
  if name == "bert_lora":  # lora_bias: bias + scale * lora_B.bias
    m = "encoder.layer.0.attention.self.query"
    np.testing.assert_allclose(merged[m + ".bias"], orig[m + ".bias"] + ad.modules[m]["scale"]
                               * ad.modules[m]["bias"], rtol=0, atol=1e-6)


def test_cli_merge_errors(tmp_path, capsys):
  assert main(["lora", "merge", str(tmp_path / "nope"), str(FIX / "peft_llama_lora"),
               str(tmp_path / "o")]) == 2
  assert "no such folder" in capsys.readouterr().err
  # a BERT adapter on the Llama checkpoint: named modules that do not exist
  assert main(["lora", "merge", str(FIX / "llama_tiny"), str(FIX / "peft_bert_lora"),
               str(tmp_path / "o")]) == 2
  assert "no such tensor" in capsys.readouterr().err
  assert not (tmp_path / "o").exists()
  (tmp_path / "exists").mkdir()
  assert main(["lora", "merge", str(FIX / "llama_tiny"), str(FIX / "peft_llama_lora"),
               str(tmp_path / "exists")]) == 2
  assert "already exists" in capsys.readouterr().err


def test_cli_extract_matches_mergekit_extract_lora(tmp_path, capsys):
  ft_dir = tmp_path / "ft"
  base = jp.io.load_safetensors(FIX / "llama_tiny")
  jp.io.save_safetensors(finetuned(base), ft_dir,
                         config=json.loads((FIX / "llama_tiny" / "config.json").read_text()))
  out = tmp_path / "extracted"
  assert main(["lora", "extract", str(FIX / "llama_tiny"), str(ft_dir), str(out), "--rank", "8"]) == 0
  assert "extracted 14 module(s), ranks [8]" in capsys.readouterr().out
  ours, theirs = jp.adapt.read_peft(out), jp.adapt.read_peft(FIX / "peft_mergekit_extract")
  for k in ("r", "lora_alpha", "rank_pattern", "alpha_pattern", "use_rslora", "task_type"):
    assert ours.config[k] == theirs.config[k], k
  assert set(ours.config["target_modules"]) == set(theirs.config["target_modules"])
  assert set(ours.config["modules_to_save"]) == set(theirs.config["modules_to_save"])
  assert set(ours.modules) == set(theirs.modules)
  for m in theirs.modules:  # factors agree up to singular-vector signs: compare products
    np.testing.assert_allclose(ours.delta_hf(m), theirs.delta_hf(m), rtol=0, atol=2e-6, err_msg=m)
    np.testing.assert_allclose(np.linalg.norm(ours.modules[m]["A"], axis=1),
                               np.linalg.norm(theirs.modules[m]["A"], axis=1), rtol=1e-5)
  assert set(ours.modules_to_save) == set(theirs.modules_to_save)
  for n, v in theirs.modules_to_save.items():
    np.testing.assert_array_equal(ours.modules_to_save[n], v)


def test_extraction_error_is_the_svd_tail():
  k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
  d = (jax.random.normal(k1, (40, 6)) @ jax.random.normal(k2, (6, 30))
       + 0.01 * jax.random.normal(k3, (40, 30)))
  s = np.linalg.svd(np.asarray(d, np.float64), compute_uv=False)
  for r in (1, 3, 6, 10):
    a, b, info = jp.adapt.extract_tensor(d, max_rank=r)
    err = float(jnp.linalg.norm(d - a @ b))
    tail = float(np.sqrt(np.sum(s[r:] ** 2)))          # Eckart-Young optimum
    assert info["rank"] == r and err == pytest.approx(tail, rel=1e-3, abs=1e-5)
    assert info["tail"] == pytest.approx(tail, rel=1e-4)
    # distribute_scale: ||A_k|| = ||B_k|| = sqrt(S_k)
    np.testing.assert_allclose(np.linalg.norm(a, axis=0), np.sqrt(s[:r]), rtol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), np.sqrt(s[:r]), rtol=1e-4)
  a, b, _ = jp.adapt.extract_tensor(d, max_rank=4, distribute_scale=False)
  np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, rtol=1e-5)   # B = Vh rows
  assert jp.adapt.choose_rank(np.array([5.0, 1e-3, 1e-6]), max_rank=8, sv_epsilon=1e-4) == 2
  assert jp.adapt.choose_rank(s, max_rank=40, energy=0.999) <= 6


def test_extract_tree_roundtrip_through_merge():
  k1, k2 = jax.random.split(jax.random.key(1))
  base = {"l": {"kernel": jax.random.normal(k1, (16, 12))}}
  low = jax.random.normal(k2, (16, 3)) @ jax.random.normal(k1, (3, 12))
  ft = {"l": {"kernel": base["l"]["kernel"] + low}}
  ad, infos = jp.adapt.extract_tree(base, ft, "**/kernel", max_rank=5)
  assert infos["l/kernel"]["rank"] == 5 and infos["l/kernel"]["tail"] < 1e-4
  np.testing.assert_allclose(jp.adapt.merge(base, ad)["l"]["kernel"], ft["l"]["kernel"], atol=2e-5)


def test_extract_leaves_unchanged_tensors_out_and_keeps_peft_semantics(tmp_path, capsys):
  """Only the Linear weights changed: no embedding/head/norm is stored (issue 26 item 3: a 49 MB
  adapter for a rank-8 delta of MiniLM was the unchanged embeddings); merging it gives the
  fine-tuned model back up to the SVD tail."""
  base = jp.io.load_safetensors(FIX / "llama_tiny")
  ft = finetuned(base)
  changed_linear = {n: ft[n] if base[n].ndim == 2 and "embed" not in n and "lm_head" not in n
                    else np.asarray(base[n]) for n in base}
  norm = "model.layers.0.input_layernorm.weight"
  changed_linear_norm = dict(changed_linear, **{norm: ft[norm]})
  cfg = json.loads((FIX / "llama_tiny" / "config.json").read_text())
  for name, tensors in (("lin", changed_linear), ("lin_norm", changed_linear_norm)):
    jp.io.save_safetensors(tensors, tmp_path / name, config=cfg)
    assert main(["lora", "extract", str(FIX / "llama_tiny"), str(tmp_path / name),
                 str(tmp_path / f"a_{name}"), "--rank", "8", "-q"]) == 0
  capsys.readouterr()
  lin = jp.adapt.read_peft(tmp_path / "a_lin")
  assert lin.modules_to_save == {} and lin.config["modules_to_save"] is None
  assert len(lin.modules) == 14
  size = (tmp_path / "a_lin" / "adapter_model.safetensors").stat().st_size
  factors = sum(m["A"].nbytes + m["B"].nbytes for m in lin.modules.values())
  assert size < factors + 16_384, (size, factors)  # the factors and a header: nothing else
  with_norm = jp.adapt.read_peft(tmp_path / "a_lin_norm")
  # the changed norm's key only; PEFT wraps every module of a key and needs each one's tensors
  assert set(with_norm.modules_to_save) == {n for n in base if "input_layernorm" in n}
  assert len(with_norm.modules_to_save) > 1
  assert with_norm.config["modules_to_save"] == ["input_layernorm"]
  np.testing.assert_array_equal(with_norm.modules_to_save[norm], ft[norm])
  # PEFT semantics: a wrapped module without a stored tensor is the base's copy; merged
  # = fine-tuned (up to the truncation of the Linear deltas).
  assert main(["lora", "merge", str(FIX / "llama_tiny"), str(tmp_path / "a_lin_norm"),
               str(tmp_path / "merged"), "-q"]) == 0
  merged = jp.io.load_safetensors(tmp_path / "merged")
  for n, v in changed_linear_norm.items():
    if v.ndim == 2 and "embed" not in n and "lm_head" not in n:
      np.testing.assert_allclose(merged[n], v, atol=5e-3, err_msg=n)  # the rank-8 tail
    else:
      np.testing.assert_array_equal(merged[n], v, err_msg=n)
  # --save-module still saves a module whole, changed or not
  assert main(["lora", "extract", str(FIX / "llama_tiny"), str(tmp_path / "lin"),
               str(tmp_path / "a_asked"), "--rank", "8", "--save-module", "embed_tokens",
               "-q"]) == 0
  asked = jp.adapt.read_peft(tmp_path / "a_asked")
  assert set(asked.modules_to_save) == {"model.embed_tokens.weight"}
