"""LLM in a flash benchmark: a trained ReLU Llama run from disk at half its size in memory.

Pipeline (everything on real text, nothing random about the sparsity):

1. Train a small byte-level Llama (SiLU) on the Python language reference and
   scikit-learn's dataset descriptions (``jaxparams.calib.corpus``), relufy it
   (SiLU -> ReLU) and fine-tune briefly with an L1 penalty on the FFN activations
   (ProSparse-style, ``flash.finetune(activation_l1=...)``: a few minutes of training
   give ~50% natural ReLU sparsity, the penalty pushes it towards the paper's regime);
   perplexities on held-out text (the standard library's docstrings) before and after.
2. Measure the FFN sparsity per layer on held-out text; capture FFN inputs, train
   low-rank predictors, report recall/precision per layer and the held-out
   perplexity with the predicted neurons only.
3. Grow the trained model to >= 0.5B parameters: the residual stream with
   ``jaxparams.scale.widen_llama_hidden`` (every hidden unit copied 8x, function and FFN
   pre-activations unchanged), then the FFN with ``jaxparams.scale.widen_llama_ffn``
   (Net2WiderNet, round-robin: every new neuron duplicates a trained one, so the
   activation pattern -- and the sparsity -- is exactly the small model's; checked on the
   generated tokens). The predictors grow with the same mappings. The big model is
   written to a temporary folder outside the repository, in the bundled and the split
   (unbundled, neuron-major) layouts.
4. Run ``jaxparams flash run`` (one process per setting, page cache dropped before and
   after every token) at a memory budget of half the model: naive (each layer read whole),
   predictor (no window), predictor + windowing (k=5), predictor + windowing + bundling;
   and the oracle predictor against the dense model (max |logit diff|).

Usage: ``python benchmarks/flash.py --out OUT.json [--quick]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import flash
from jaxparams.calib import docstring_sentences, reference_sentences, sklearn_sentences
from jaxparams.io import SafetensorsWriter
from jaxparams.models import Llama, LlamaConfig
from jaxparams.models.hf_llama import name_map
from jaxparams.scale import widen_llama_ffn, widen_llama_hidden
from jaxparams.scale.unit_mapping import wider_mapping

# grow_hidden: the residual stream is widened too (8x), so that a neuron's bundle on disk is
# 3 x 1024 x 4 B = 12 KiB, the size class of the paper's models (OPT-6.7B: 2 x 4096 x 2 B =
# 16 KiB) rather than 1.5 KiB: per-read costs then weigh as they do there.
FULL = dict(hidden=128, layers=4, heads=4, inter=512, seq=64, batch=16, silu_steps=80,
            relu_steps=50, l1=5.0, lr=3e-3, rank=32, pred_steps=400, capture_rows=64,
            grow_hidden=1024, grow_to=40960, new_tokens=12, prompt_bytes=24)
QUICK = dict(hidden=64, layers=4, heads=4, inter=256, seq=64, batch=16, silu_steps=40,
             relu_steps=30, l1=5.0, lr=3e-3, rank=16, pred_steps=200, capture_rows=32,
             grow_hidden=256, grow_to=4096, new_tokens=8, prompt_bytes=16)


def _batches(ids: np.ndarray, batch: int) -> list[np.ndarray]:
  return [ids[i:i + batch] for i in range(0, len(ids) - batch + 1, batch)]


def _grow_and_write(params, cfg: LlamaConfig, new_hidden: int, new_inter: int,
                    out: Path) -> LlamaConfig:
  """Widens the stream, then each layer's FFN, with the library's Net2WiderNet; HF safetensors."""
  params, cfg = widen_llama_hidden(params, cfg, new_hidden)
  big_cfg = dataclasses.replace(cfg, intermediate_size=new_inter)
  one = dataclasses.replace(cfg, num_hidden_layers=1)
  nmap = name_map(big_cfg)
  flat = {}
  with SafetensorsWriter(out, header_reserve=1 << 16) as w:
    for i in range(cfg.num_hidden_layers):
      grown, _ = widen_llama_ffn({"layers_0": params[f"layers_{i}"]}, one, new_inter)
      for proj, block in grown["layers_0"]["mlp"].items():
        flat[f"layers_{i}/mlp/{proj}/kernel"] = block["kernel"]
      for fpath, (hf, transpose) in nmap.items():
        if not fpath.startswith(f"layers_{i}/"):
          continue
        a = flat.pop(fpath, None)
        if a is None:
          node = params
          for k in fpath.split("/"):
            node = node[k]
          a = node
        a = np.asarray(a, np.float32)
        w.add(hf, np.ascontiguousarray(a.T) if transpose else a)
      del grown
    for fpath, (hf, transpose) in nmap.items():
      if fpath.startswith("layers_"):
        continue
      node = params
      for k in fpath.split("/"):
        node = node[k]
      a = np.asarray(node, np.float32)
      w.add(hf, np.ascontiguousarray(a.T) if transpose else a)
    hf_cfg = big_cfg.to_hf_dict()
    hf_cfg["torch_dtype"] = "float32"
    w.write_json("config.json", hf_cfg)
  return big_cfg


def _cli_run(model: Path, out: Path, prompt: list[int], n: int, extra: list[str]) -> dict:
  cmd = [sys.executable, "-m", "jaxparams.cli.main", "flash", "run", str(model),
         "--prompt-ids", ",".join(map(str, prompt)), "--new-tokens", str(n),
         "--memory-budget", "0.5", "--report", str(out)] + extra
  t0 = time.perf_counter()
  r = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if r.returncode:
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
  print("   ", r.stdout.strip(), f"({time.perf_counter() - t0:.0f} s)", flush=True)
  return json.loads(out.read_text())


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True, help="result JSON")
  ap.add_argument("--quick", action="store_true", help="small model, whole pipeline, minutes")
  ap.add_argument("--workdir", default=None, help="temporary folder (default: system temp)")
  ap.add_argument("--keep", action="store_true",
                  help="keep the temporary folder (models, predictors, reports) for profiling")
  args = ap.parse_args()
  s = QUICK if args.quick else FULL
  t_all = time.perf_counter()
  result: dict = {"quick": args.quick, "sizes": s,
                  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                  "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, "
                             f"{platform.platform()}", "jax": jax.__version__}
  work = Path(tempfile.mkdtemp(prefix="flash-bench-", dir=args.workdir))
  try:
    # 1. Train (SiLU), relufy, fine-tune.
    train_ids = flash.byte_ids(reference_sentences() + sklearn_sentences(), s["seq"] + 1)
    held_ids = flash.byte_ids(docstring_sentences(), s["seq"] + 1)
    rng = np.random.default_rng(0)
    train = _batches(train_ids[rng.permutation(len(train_ids))], s["batch"])
    held = _batches(held_ids, s["batch"])[:8]
    cfg = LlamaConfig(vocab_size=256, hidden_size=s["hidden"], intermediate_size=s["inter"],
                      num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                      max_position_embeddings=512, bos_token_id=None, eos_token_id=None)
    model = Llama(cfg)
    params = model.init(jax.random.key(0), jnp.asarray(train[0][:1]))["params"]
    print(f"1. training SiLU Llama ({sum(x.size for x in jax.tree.leaves(params))} params)",
          flush=True)
    t0 = time.perf_counter()
    params, losses = flash.finetune(model, params, train, steps=s["silu_steps"],
                                    learning_rate=s["lr"], log_every=25)
    ppl = {"silu": flash.perplexity(model, params, held)}
    rcfg = flash.relufy(cfg)
    rmodel = Llama(rcfg)
    ppl["relu_before_finetune"] = flash.perplexity(rmodel, params, held)
    params, losses2 = flash.finetune(rmodel, params, train, steps=s["relu_steps"],
                                     learning_rate=s["lr"] / 3, activation_l1=s["l1"],
                                     log_every=20)
    ppl["dense"] = flash.perplexity(rmodel, params, held)
    result["train_seconds"] = time.perf_counter() - t0
    result["train_losses"] = {"silu": losses, "relu_finetune": losses2}
    print(f"   perplexities {ppl}", flush=True)

    # 2. Sparsity, predictors.
    sparsity = flash.ffn_sparsity(rmodel, params, held)
    print(f"2. FFN sparsity per layer (held-out): {np.round(sparsity, 3).tolist()}", flush=True)
    cap = np.concatenate(train[:max(1, s["capture_rows"] // s["batch"])])
    xs = flash.ffn_inputs(rmodel, params, cap[:, :-1])
    act = [flash.active_neurons(params, i, x) for i, x in enumerate(xs)]
    preds = flash.train_predictors(xs, act, rank=s["rank"], steps=s["pred_steps"])
    hx = flash.ffn_inputs(rmodel, params, np.concatenate(held[:2])[:, :-1])
    hact = [flash.active_neurons(params, i, x) for i, x in enumerate(hx)]
    metrics = flash.predictor_metrics(preds, hx, hact)
    ppl["learned"] = flash.predicted_perplexity(rmodel, params, preds, held)
    print(f"   predictors (held-out) {[{k: round(v, 3) for k, v in m.items()} for m in metrics]}; "
          f"perplexity dense {ppl['dense']:.3f} -> learned {ppl['learned']:.3f}", flush=True)
    result.update(perplexity=ppl, sparsity_per_layer=sparsity, predictor_metrics=metrics)

    # 3. Grow, write, bundle.
    t0 = time.perf_counter()
    big = work / "hf"
    big_cfg = _grow_and_write(params, rcfg, s["grow_hidden"], s["grow_to"], big)
    g, _ = wider_mapping(s["inter"], s["grow_to"])
    gh, _ = wider_mapping(s["hidden"], s["grow_hidden"])
    big_preds = [flash.expand_predictor(p, g, gh) for p in preds]
    flash.save_predictors(big_preds, work / "preds")
    bundled, split = work / "bundled", work / "split"
    flash.bundle(big, bundled)
    flash.bundle(big, split, layout="split")
    shutil.rmtree(big)
    os.sync()  # written pages are dirty until flushed, and POSIX_FADV_DONTNEED cannot drop them
    c, hd = big_cfg, big_cfg.head_dim_
    attn = 2 * c.hidden_size * hd * (c.num_attention_heads + c.num_key_value_heads)
    n_params = (c.vocab_size * c.hidden_size * 2 + c.num_hidden_layers * (
        attn + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size) + c.hidden_size)
    result["model"] = {"params": n_params, "grown_from_params": sum(
        x.size for x in jax.tree.leaves(params)), "intermediate_size": s["grow_to"],
        "grown_from_intermediate": s["inter"], "hidden_size": s["grow_hidden"],
        "grown_from_hidden": s["hidden"], "layers": s["layers"], "dtype": "float32",
        "growth": "Net2WiderNet round robin (jaxparams.scale.widen_llama_hidden, then "
        "widen_llama_ffn)", "write_seconds": time.perf_counter() - t0}
    print(f"3. grown to {n_params / 1e6:.1f}M params (hidden {s['hidden']} -> "
          f"{s['grow_hidden']}, FFN {s['inter']} -> {s['grow_to']}), "
          f"written and bundled in {time.perf_counter() - t0:.0f} s", flush=True)

    # 4. Runs.
    prompt = list(docstring_sentences()[3].encode("utf-8")[:s["prompt_bytes"]])
    n = s["new_tokens"]
    runs = {"naive": (bundled, ["--naive"]),
            "predictor": (split, ["--predictors", str(work / "preds"), "--window", "0",
                                  "--no-bundle"]),
            "windowing": (split, ["--predictors", str(work / "preds"), "--window", "5",
                                  "--no-bundle"]),
            "bundled": (bundled, ["--predictors", str(work / "preds"), "--window", "5"])}
    settings = {}
    print("4. runs at a memory budget of half the model", flush=True)
    for name, (m, extra) in runs.items():
      settings[name] = _cli_run(m, work / f"{name}.json", prompt, n, extra)
    result["settings"] = settings
    base = settings["naive"]["tokens_per_s"]
    result["speedup_vs_naive"] = {k: v["tokens_per_s"] / base for k, v in settings.items()}
    # The page-cache drop after every token is the protocol's way to hold the budget (the
    # kernel may not keep the model's pages); naive pays for 2 GB of pages, so also report
    # the ratio with the time inside the drop call taken out of every setting.
    no_drop = {k: 1 / (v["wall_s_per_token"] - v["cache_drop_s_per_token"])
               for k, v in settings.items()}
    result["speedup_vs_naive_excluding_cache_drop"] = {k: v / no_drop["naive"]
                                                       for k, v in no_drop.items()}

    # 5. Oracle == dense, sparsity preserved by growth.
    with flash.FlashModel(bundled, flash.FlashConfig(memory_budget=1.0, naive=True)) as m:
      dense = m.generate(prompt, 4, keep_logits=True)
    with flash.FlashModel(bundled, flash.FlashConfig(memory_budget=0.5, oracle=True)) as m:
      oracle = m.generate(prompt, 4, keep_logits=True)
    result["oracle_max_abs_diff"] = float(np.max(np.abs(np.stack(dense["logits"]) -
                                                        np.stack(oracle["logits"]))))
    result["oracle_same_tokens"] = dense["tokens"] == oracle["tokens"]
    result["oracle_dropped_neurons_per_token"] = oracle["dropped_neurons_per_token"]
    seq = np.asarray([prompt + oracle["tokens"][:-1]])
    sx = flash.ffn_inputs(rmodel, params, seq)
    small_active = [float(flash.active_neurons(params, i, x)[len(prompt) - 1:].mean())
                    for i, x in enumerate(sx)]
    result["sparsity_check"] = {"small_model_active_fraction": small_active,
                                "grown_model_active_fraction": oracle["active_fraction_per_layer"]}
    print(f"5. oracle vs dense max |diff| {result['oracle_max_abs_diff']:.2e}; active fraction "
          f"small {np.round(small_active, 4).tolist()} vs grown "
          f"{np.round(oracle['active_fraction_per_layer'], 4).tolist()}", flush=True)
  finally:
    if args.keep:
      print(f"kept {work}", flush=True)
    else:
      shutil.rmtree(work, ignore_errors=True)
  result["total_seconds"] = time.perf_counter() - t_all
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(result, indent=1))
  print(f"wrote {out} ({result['total_seconds']:.0f} s)")
  for k, v in result["settings"].items():
    print(f"  {k:10s} {v['tokens_per_s']:8.2f} tok/s  {v['bytes_read_per_token'] / 1e6:9.2f} MB/tok "
          f"({100 * v['bytes_read_fraction_of_ffn']:6.2f}% FFN)  {v['read_calls_per_token']:8.0f} "
          f"calls/tok  chunk {v['avg_chunk_bytes'] / 1024:7.1f} KiB  io {v['io_s_per_token']:.3f} "
          f"mem {v['mem_s_per_token']:.3f} (drop {v['cache_drop_s_per_token']:.3f}) compute "
          f"{v['compute_s_per_token']:.3f} s/tok  x{result['speedup_vs_naive'][k]:.2f} naive "
          f"(x{result['speedup_vs_naive_excluding_cache_drop'][k]:.2f} without the drops)")


if __name__ == "__main__":
  main()
