"""RegMean from a merge recipe on HF checkpoints (statistics per model, streamed merge)."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

from jaxparams.calib import collect_stats, text_batches
from jaxparams.demo.tiny_llama import llama_config, write_llama
from jaxparams.io import load_safetensors
from jaxparams.merge import learned
from jaxparams.merge.learned.records import REGMEAN
from jaxparams.merge.registry import get_method
from jaxparams.merge.stream import merge_checkpoints, plan_checkpoints
from jaxparams.models.hf import from_hf, hf_name_map
from jaxparams import tree as jtree

CFG = llama_config(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4)
RECIPE = """\
merge_method: regmean
models:
  - model: a
  - model: b
parameters:
  calibration: cal.txt
  alpha: 0.9
  max_length: 8
  batch_size: 4
"""


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
  d = tmp_path_factory.mktemp("regmean")
  words = ["[UNK]", "[PAD]"] + [f"w{i}" for i in range(14)]
  tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  write_llama(d / "base", cfg=CFG, seed=0)
  for i, m in enumerate("ab"):
    write_llama(d / m, like=d / "base", noise=0.1, seed=i + 1)
    tok.save(str(d / m / "tokenizer.json"))
  rng = np.random.default_rng(0)
  texts = [" ".join(f"w{j}" for j in rng.integers(0, 14, rng.integers(3, 9))) for _ in range(10)]
  (d / "cal.txt").write_text("\n".join(texts) + "\n\n")
  (d / "r.yml").write_text(RECIPE)
  return d, texts, tok


def test_recipe_regmean_equals_tree_regmean(ckpts, monkeypatch):
  d, texts, tok = ckpts
  monkeypatch.chdir(d)
  summary = merge_checkpoints("r.yml", d / "out", progress=False)
  got = load_safetensors(d / "out")
  # The tree function on the same models and calibration batches (independent capture).
  params, grams = [], []
  for m in "ab":
    module, p, cfg = from_hf(d / m)
    batches = text_batches(tok, texts, batch_size=4, max_length=8)
    grams.append({k: s.xtx for k, s in collect_stats(module, p, batches).items()})
    params.append(p)
  want = jtree.flatten(learned.regmean(params, grams, alpha=0.9))
  nmap = hf_name_map(cfg)
  n_regression = 0
  for path, (hf, transpose) in nmap.items():
    w = np.asarray(want[path]).T if transpose else np.asarray(want[path])
    np.testing.assert_allclose(got[hf], w, atol=2e-5, rtol=1e-4, err_msg=hf)
    n_regression += path in grams[0]
  assert summary["tensors"] == len(got) and n_regression >= 14  # 7 Linears x 2 layers (+ head)
  # Not the plain average on Linear weights (the Grams matter), the average elsewhere.
  ms = [load_safetensors(d / m) for m in "ab"]
  q = "model.layers.0.self_attn.q_proj.weight"
  assert np.abs(got[q] - sum(x[q] for x in ms) / 2).max() > 1e-3
  n = "model.layers.0.input_layernorm.weight"
  np.testing.assert_allclose(got[n], sum(x[n] for x in ms) / 2, atol=1e-6)
  assert "regmean" in (d / "out" / "mergekit_config.yml").read_text()


def test_recipe_errors(ckpts, monkeypatch):
  d, _, _ = ckpts
  monkeypatch.chdir(d)
  with pytest.raises(ValueError, match=r"unknown merge method 'regmaen'; valid methods: .*ties.*"
                                       r"calibration.*regmean"):
    get_method("regmaen")
  (d / "bad.yml").write_text(RECIPE.replace("alpha: 0.9", "alpah: 0.9"))
  with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['alpah'\] for merge method "
                                       r"'regmean'; valid parameters: \['alpha', 'batch_size', "
                                       r"'calibration', 'eps', 'max_length', 'max_texts'\]"):
    merge_checkpoints("bad.yml", d / "o1", progress=False)
  (d / "nocal.yml").write_text(RECIPE.replace("cal.txt", "missing.txt"))
  with pytest.raises(FileNotFoundError, match=r"nocal.yml: calibration file 'missing.txt' not "
                                              r"found .*one calibration text per line"):
    merge_checkpoints("nocal.yml", d / "o2", progress=False)
  (d / "noparam.yml").write_text(RECIPE.replace("  calibration: cal.txt\n", ""))
  with pytest.raises(ValueError, match=r"'regmean' needs calibration text: set 'parameters: "
                                       r"\{calibration: FILE.txt\}'"):
    merge_checkpoints("noparam.yml", d / "o3", progress=False)
  (d / "range.yml").write_text(RECIPE.replace("alpha: 0.9", "alpha: 1.5"))
  with pytest.raises(ValueError, match=r"'regmean' parameter alpha=1.5 is out of range"):
    merge_checkpoints("range.yml", d / "o4", progress=False)
  assert not any((d / f"o{i}").exists() for i in range(1, 5))
  with pytest.raises(ValueError, match="r.yml: 'regmean' captures statistics .* without --dry-run"):
    plan_checkpoints("r.yml")


def test_regmean_record_under_vmap_of_the_tree_driver():
  import jax
  import jax.numpy as jnp
  ks = jax.random.split(jax.random.key(0), 4)
  ms = [{"l": {"kernel": jax.random.normal(k, (4, 3)), "bias": jnp.full(3, float(i))}}
        for i, k in enumerate(ks[:2])]
  xs = [jax.random.normal(k, (20, 4)) for k in ks[2:]]
  grams = [{"l/kernel": x.T @ x} for x in xs]
  alphas = jnp.array([0.5, 1.0])
  got = jax.vmap(lambda a: learned.regmean(ms, grams, alpha=a, eps=0.0))(alphas)
  for j, a in enumerate([0.5, 1.0]):
    want = learned.regmean(ms, grams, alpha=a, eps=0.0)
    np.testing.assert_allclose(got["l"]["kernel"][j], want["l"]["kernel"], rtol=1e-5, atol=1e-5)
  # alpha = 1: the least-squares solution of the stacked problem; biases averaged
  x, y = jnp.concatenate(xs), jnp.concatenate([x @ m["l"]["kernel"] for x, m in zip(xs, ms)])
  np.testing.assert_allclose(got["l"]["kernel"][1], jnp.linalg.lstsq(x, y)[0], atol=1e-4)
  np.testing.assert_allclose(got["l"]["bias"][1], jnp.full(3, 0.5), atol=1e-6)


def test_regmean_record_checks_name_tensor_and_inputs():
  w = [np.ones((3, 2), np.float32)] * 2
  with pytest.raises(ValueError, match=r"tensor 'k': Gram of 'b' has shape \(2, 2\), expected "
                                       r"\(3, 3\)"):
    REGMEAN.apply(None, w + [np.eye(3, dtype=np.float32), np.eye(2, dtype=np.float32)],
                  path="k", labels=("model 'a'", "model 'b'", "Gram of 'a'", "Gram of 'b'"))
  with pytest.raises(ValueError, match="unknown parameter.*valid parameters: "
                                       r"\['alpha', 'eps', 'input_axis'\]"):
    REGMEAN.make_config(alfa=1.0)


@pytest.mark.slow
def test_recipe_fisher_equals_tree_fisher(ckpts, monkeypatch):
  import jax
  import jax.numpy as jnp
  d, texts, tok = ckpts
  monkeypatch.chdir(d)
  (d / "f.yml").write_text(RECIPE.replace("regmean", "fisher").replace(
      "alpha: 0.9", "min_fisher: 1.0e-7\n  max_texts: 4"))
  merge_checkpoints("f.yml", d / "fout", progress=False)
  got = load_safetensors(d / "fout")
  params, fishers = [], []
  for m in "ab":
    module, p, cfg = from_hf(d / m)
    total = jax.tree.map(jnp.zeros_like, p)
    for text in texts[:4]:  # one text at a time: the squared gradient of log p(text)
      x = text_batches(tok, [text], batch_size=1, max_length=8)[0]
      ids, mask = jnp.asarray(x["input_ids"][0]), jnp.asarray(x["attention_mask"][0])
      t = ids.shape[0]

      def ll(q, ids=ids, mask=mask, t=t):
        logp = jax.nn.log_softmax(module.apply({"params": q}, ids[None], mask[None])[0], -1)
        return jnp.sum(logp[jnp.arange(t - 1), ids[1:]] * mask[1:])
      total = jax.tree.map(lambda a, g: a + g * g, total, jax.grad(ll)(p))
    params.append(p)
    fishers.append(total)
  want = jtree.flatten(learned.fisher_merge(params, fishers, min_fisher=1e-7))
  for path, (hf, transpose) in hf_name_map(cfg).items():
    w = np.asarray(want[path]).T if transpose else np.asarray(want[path])
    np.testing.assert_allclose(got[hf], w, atol=2e-5, rtol=1e-4, err_msg=hf)
  ms = [load_safetensors(d / m) for m in "ab"]
  q = "model.layers.0.self_attn.q_proj.weight"
  assert np.abs(got[q] - (ms[0][q] + ms[1][q]) / 2).max() > 1e-4
