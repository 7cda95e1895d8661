"""Refactoring guard: hashes of every output tensor of representative calibrated/streamed runs.

Runs quantization (RTN/GPTQ/AWQ/decoupleQ/AutoRound/OmniQuant, checkpoint and in-memory, both
layouts, dequantize), calibrated pruning (Wanda/SparseGPT) and the data-aware merges
(RegMean/Fisher) on the tiny fixtures under ``tests/fixtures`` (plus a word-level tokenizer)
and writes ``{run: {tensor or file: sha256}}`` to ``--out``. Run it before and after a
refactoring and compare the two JSON files: every hash must be equal (bit-identical outputs).

Usage::

  python benchmarks/identity_check.py --out /tmp/before.json
  python benchmarks/identity_check.py --out /tmp/after.json --compare /tmp/before.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "tests" / "fixtures"
WORDS = "the a cat dog sat on mat rug ran fast slow big small red blue green".split()


def _tokenizer(folder: Path) -> None:
  from tokenizers import Tokenizer, models, pre_tokenizers
  vocab = {"[PAD]": 0, "[UNK]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
  tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  tok.save(str(folder / "tokenizer.json"))


def _texts(n: int = 12) -> list[str]:
  rng = np.random.default_rng(0)
  return [" ".join(rng.choice(WORDS, int(rng.integers(4, 12)))) for _ in range(n)]


def _strip_times(obj):
  if isinstance(obj, dict):
    return {k: _strip_times(v) for k, v in obj.items()
            if not any(t in k.lower() for t in ("second", "time"))}
  if isinstance(obj, list):
    return [_strip_times(v) for v in obj]
  return obj


def _h(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()[:32]


def hash_dir(folder: Path) -> dict[str, str]:
  """sha256 of every tensor (name, dtype, shape, bytes) and of every JSON/text file."""
  from jaxparams import io as jio
  out = {}
  for f in sorted(folder.rglob("*")):
    if not f.is_file():
      continue
    rel = str(f.relative_to(folder))
    if f.suffix == ".safetensors":
      with jio.open_checkpoint(f) as r:
        for n in sorted(r.names()):
          a = np.ascontiguousarray(np.asarray(r.read(n)))
          out[f"{rel}:{n}"] = _h(f"{a.dtype}{a.shape}".encode() + a.tobytes())
    elif f.suffix == ".json":
      out[rel] = _h(json.dumps(_strip_times(json.loads(f.read_text())), sort_keys=True).encode())
    elif f.suffix in (".md", ".yml", ".yaml", ".txt"):
      out[rel] = _h(f.read_bytes())
  return out


def hash_tree(tree) -> dict[str, str]:
  import jax
  from jaxparams import tree as jtree
  out = {}
  for p, v in jtree.flatten(jax.tree.map(np.asarray, tree)).items():
    a = np.ascontiguousarray(v)
    out[p] = _h(f"{a.dtype}{a.shape}".encode() + a.tobytes())
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--compare", default=None, help="an earlier --out to compare with")
  ap.add_argument("--only", default=None, help="comma-separated run names")
  ap.add_argument("--resume", action="store_true", help="keep the runs already in --out")
  args = ap.parse_args(argv)

  import jax
  import jaxparams.models  # noqa: F401
  from jaxparams.cli.main import main as cli
  from jaxparams.quant import stream
  import jaxparams as jp

  work = Path(tempfile.mkdtemp(prefix="identity-"))
  llama, bert = work / "llama", work / "bert"
  shutil.copytree(FIX / "llama_tiny", llama)
  shutil.copytree(FIX / "bert_mlm_tiny", bert)
  _tokenizer(llama)
  _tokenizer(bert)
  texts = _texts()
  cal = work / "cal.txt"
  cal.write_text("\n".join(texts) + "\n")
  q = ["--max-length", "16", "--batch-size", "4", "--no-progress", "--compile-cache", "none"]
  results: dict[str, dict[str, str]] = {}
  g32 = {"bits": 4, "group_size": 32}

  def lib_q(name, src, rules, **kw):
    out = work / name
    stream.quantize_checkpoint(src, out, rules, calibration=texts, batch_size=4, max_length=16,
                               **kw)
    return hash_dir(out)

  def cli_run(name, argv):
    out = work / name
    rc = cli([str(a) for a in argv[:2]] + [str(out)] + [str(a) for a in argv[2:]])
    if rc:
      raise SystemExit(f"{name}: exit {rc}")
    return hash_dir(out)

  def regmean_fisher(method):
    from jaxparams.demo.tiny_llama import llama_config, write_llama
    from jaxparams.merge.learned.checkpoints import merge_data_aware
    d = work / f"m_{method}"
    cfg = llama_config(vocab_size=24, hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4)
    write_llama(d / "base", cfg=cfg, seed=0)
    for i, m in enumerate("ab"):
      write_llama(d / m, like=d / "base", noise=0.1, seed=i + 1)
      _tokenizer(d / m)
    (d / "cal.txt").write_text("\n".join(texts) + "\n")
    extra = "alpha: 0.9" if method == "regmean" else "min_fisher: 1.0e-7"
    (d / "r.yml").write_text(f"merge_method: {method}\nmodels:\n  - model: {d / 'a'}\n"
                             f"  - model: {d / 'b'}\nparameters:\n  calibration: {d / 'cal.txt'}\n"
                             f"  {extra}\n  max_length: 8\n  batch_size: 4\n")
    merge_data_aware(d / "r.yml", d / "out")
    return hash_dir(d / "out")

  def in_memory_gptq():
    from jaxparams.calib import text_batches
    from jaxparams.quant.calibrate import quantize_model
    from tokenizers import Tokenizer
    module, params, _ = jp.models.from_hf(llama)
    batches = text_batches(Tokenizer.from_file(str(llama / "tokenizer.json")), texts,
                           batch_size=4, max_length=16)
    qp, _ = quantize_model(module, params, [("**", ("gptq", g32))], batches)
    return hash_tree(qp)

  def in_memory_prune(method, sequential):
    from jaxparams.calib import text_batches
    from jaxparams.prune.calibrated import prune_model
    from tokenizers import Tokenizer
    module, params, _ = jp.models.from_hf(llama)
    batches = text_batches(Tokenizer.from_file(str(llama / "tokenizer.json")), texts,
                           batch_size=4, max_length=16)
    pp, _ = prune_model(module, params, batches, method, sparsity=0.5, sequential=sequential)
    return hash_tree(pp)

  runs = {
      "q_rtn_llama_cli": lambda: cli_run("q_rtn_llama", ["quantize", llama, "--method", "rtn",
                                                         "--group-size", "32", *q]),
      "q_gptq_llama_cli": lambda: cli_run("q_gptq_llama", [
          "quantize", llama, "--method", "gptq", "--group-size", "32", "--calibration", cal, *q]),
      "q_gptq_llama_gptqfmt_cli": lambda: cli_run("q_gptq_fmt", [
          "quantize", llama, "--method", "gptq", "--group-size", "32", "--calibration", cal,
          "--format", "gptq", *q]),
      "q_awq_llama_cli": lambda: cli_run("q_awq_llama", [
          "quantize", llama, "--method", "awq", "--group-size", "32", "--calibration", cal, *q]),
      "q_rtn_bert_cli": lambda: cli_run("q_rtn_bert", ["quantize", bert, "--method", "rtn",
                                                       "--group-size", "16", *q]),
      "q_gptq_bert_cli": lambda: cli_run("q_gptq_bert", [
          "quantize", bert, "--method", "gptq", "--group-size", "16", "--calibration", cal, *q]),
      "q_gptq_trueseq_lib": lambda: lib_q("q_gptq_ts", llama, [("**", ("gptq", g32))],
                                          true_sequential=True),
      "q_decoupleq_lib": lambda: lib_q("q_dq", llama, [("**", ("decoupleq", g32))]),
      "q_autoround_lib": lambda: lib_q("q_ar", llama, [("**", ("autoround",
                                                               {**g32, "iters": 4}))]),
      "q_omniquant_lib": lambda: lib_q("q_omni", llama, [("**", ("omniquant",
                                                                 {**g32, "epochs": 1}))]),
      "q_mixed_nf4_rtn_lib": lambda: lib_q("q_mixed", llama, [
          ("**/mlp/**", ("nf4", {"block_size": 32})), ("**", ("rtn", g32))]),
      "dq_rtn": lambda: (stream.dequantize_checkpoint(work / "q_rtn_llama", work / "dq_rtn"),
                         hash_dir(work / "dq_rtn"))[1],
      "dq_gptqfmt": lambda: (stream.dequantize_checkpoint(work / "q_gptq_fmt", work / "dq_g"),
                             hash_dir(work / "dq_g"))[1],
      "q_gptq_in_memory": in_memory_gptq,
      "p_wanda_cli": lambda: cli_run("p_wanda", ["prune", llama, "--method", "wanda",
                                                 "--calibration", str(cal)]),
      "p_sparsegpt_cli": lambda: cli_run("p_sgpt", ["prune", llama, "--method", "sparsegpt",
                                                    "--calibration", str(cal)]),
      "p_sparsegpt_bert_cli": lambda: cli_run("p_sgpt_bert", [
          "prune", bert, "--method", "sparsegpt", "--calibration", str(cal)]),
      "p_wanda_in_memory_nonseq": lambda: in_memory_prune("wanda", False),
      "m_regmean": lambda: regmean_fisher("regmean"),
      "m_fisher": lambda: regmean_fisher("fisher"),
  }
  only = set(args.only.split(",")) if args.only else None
  if args.resume and Path(args.out).is_file():
    results.update(json.loads(Path(args.out).read_text()))
  for name, fn in runs.items():
    if (only is not None and name not in only) or name in results:
      continue
    t0 = time.perf_counter()
    results[name] = fn()
    print(f"{name}: {len(results[name])} hashes, {time.perf_counter() - t0:.1f} s", flush=True)
    Path(args.out).write_text(json.dumps(results, indent=1, sort_keys=True))
  shutil.rmtree(work, ignore_errors=True)
  if args.compare:
    before = json.loads(Path(args.compare).read_text())
    bad = 0
    for name, hashes in results.items():
      old = before.get(name)
      if old is None:
        print(f"{name}: not in {args.compare}")
        continue
      diff = sorted(k for k in set(old) | set(hashes) if old.get(k) != hashes.get(k))
      print(f"{name}: {'IDENTICAL' if not diff else f'{len(diff)} DIFFER: {diff[:6]}'} "
            f"({len(hashes)} hashes)")
      bad += bool(diff)
    print(f"{len(results) - bad} of {len(results)} runs bit-identical")
    return 1 if bad else 0
  return 0


if __name__ == "__main__":
  sys.exit(main())
