"""LoRA merge and extraction: jaxparams vs PEFT and vs mergekit-extract-lora, same inputs.

* merge: ``jaxparams lora merge BASE ADAPTER OUT`` vs PEFT (``PeftModel.from_pretrained`` +
  ``merge_and_unload`` + ``save_pretrained``, transformers/peft in the torch venv);
* extraction: ``jaxparams lora extract BASE FT OUT --rank 64`` vs ``mergekit-extract-lora
  --max-rank 64``.

Every tool runs as a fresh process under ``/usr/bin/time -v`` (wall time and peak RSS include
start-up and, for jaxparams, compilation). The checkpoints are a bf16 Llama (``--size``; the
default ``medium`` is ~0.17B params, chosen because the machine's 2 CPU cores are shared with
other engineers; ``large`` is the ~0.54B model of the merge benchmark), a PEFT LoRA (r 16,
alpha 32, fp32, on q/k/v/o/gate/up/down) and a "fine-tune" = base + a rank-32 delta + small noise
on every Linear (+ noise on norms and embeddings). Outputs are compared tensor by tensor: merged
weights against each other and against the float64 merge rounded once to bf16; extracted
adapters by their products ``B @ A`` per module and their ``modules_to_save`` tensors.

  python benchmarks/lora.py --size medium --work /tmp/lora_bench --out benchmarks/results/lora.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import zlib
from pathlib import Path

import ml_dtypes
import numpy as np

import jaxparams as jp
from jaxparams.merge.testing import llama_config, write_llama

TORCH_PY = os.environ.get("TORCH_PYTHON", "/work/torchvenv/bin/python")
MERGEKIT_EXTRACT = os.environ.get("MERGEKIT_EXTRACT", "/work/torchvenv/bin/mergekit-extract-lora")
SIZES = {
    "large": dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                  num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16),
    "medium": dict(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                   num_hidden_layers=8, num_attention_heads=16, num_key_value_heads=16),
    "small": dict(vocab_size=4096, hidden_size=256, intermediate_size=688, num_hidden_layers=4,
                  num_attention_heads=4, num_key_value_heads=2),
}
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")

PEFT_MERGE = r"""
import sys, torch
from transformers import AutoModelForCausalLM
from peft import PeftModel
base, adapter, out = sys.argv[1:4]
m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
m = PeftModel.from_pretrained(m, adapter).merge_and_unload()
m.save_pretrained(out, safe_serialization=True)
"""


def rng_for(name: str) -> np.random.Generator:
  return np.random.default_rng(zlib.crc32(name.encode()))


def build(work: Path, size: str) -> dict:
  base, ad, ft = work / f"{size}-base", work / f"{size}-adapter", work / f"{size}-ft"
  if not (base / "config.json").is_file():
    shutil.rmtree(base, ignore_errors=True)
    write_llama(base, cfg=llama_config(**SIZES[size], dtype="bfloat16"), seed=0,
                dtype="bfloat16")
  cfg = SIZES[size]
  if not (ad / "adapter_config.json").is_file():
    mods = {}
    for i in range(cfg["num_hidden_layers"]):
      for lin in LINEARS:
        name = f"model.layers.{i}.{lin}"
        with jp.io.open_checkpoint(base) as r:
          out_f, in_f = r.spec(name + ".weight").shape
        g = rng_for(name)
        mods[name] = dict(A=(g.standard_normal((16, in_f)) / np.sqrt(in_f)).astype(np.float32),
                          B=(0.02 * g.standard_normal((out_f, 16))).astype(np.float32),
                          scale=2.0)
    jp.adapt.write_peft(jp.adapt.PeftAdapter(modules=mods), ad, overwrite=True)
  if not (ft / "config.json").is_file():
    with jp.io.open_checkpoint(base) as r:
      tensors = {}
      for n in r.names():
        w = np.asarray(r.read(n), np.float32)
        g = rng_for(n)
        if w.ndim == 2 and any(lin in n for lin in LINEARS):
          u = g.standard_normal((w.shape[0], 32)).astype(np.float32)
          v = g.standard_normal((32, w.shape[1])).astype(np.float32)
          d = 0.02 * (u @ v) / np.sqrt(w.shape[1] * 32) * np.abs(w).mean() * 50
          d += 1e-3 * np.abs(w).mean() * g.standard_normal(w.shape).astype(np.float32)
        else:
          d = 0.01 * np.abs(w).mean() * g.standard_normal(w.shape).astype(np.float32)
        tensors[n] = (w + d).astype(ml_dtypes.bfloat16)
      cfg_json = json.loads((base / "config.json").read_text())
    jp.io.save_safetensors(tensors, ft, config=cfg_json, overwrite=True)
    del tensors
  with jp.io.open_checkpoint(base) as r:
    n = sum(int(np.prod(r.spec(k).shape)) for k in r.names())
  return {"base": base, "adapter": ad, "ft": ft, "params": n}


def timed(cmd: list[str], env=None) -> tuple[float, float]:
  t0 = time.perf_counter()
  p = subprocess.run(["/usr/bin/time", "-v"] + cmd, capture_output=True, text=True, env=env)
  wall = time.perf_counter() - t0
  if p.returncode != 0:
    raise RuntimeError(f"{cmd[:3]} failed ({p.returncode}):\n{p.stdout[-2000:]}\n"
                       f"{p.stderr[-3000:]}")
  m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
  return wall, (int(m.group(1)) / 1e6 if m else float("nan"))


def compare_merge(paths: dict, ours: Path, theirs: Path) -> dict:
  ad = jp.adapt.read_peft(paths["adapter"])
  out = dict(max_abs=0.0, differing=0, total=0, ours_vs_exact=0.0, peft_vs_exact=0.0,
             ours_ulps=0, peft_ulps=0)
  with jp.io.open_checkpoint(ours) as a, jp.io.open_checkpoint(theirs) as b, \
      jp.io.open_checkpoint(paths["base"]) as base:
    if set(a.names()) != set(b.names()):
      raise RuntimeError(f"tensor sets differ: {sorted(set(a.names()) ^ set(b.names()))[:4]}")
    for n in a.names():
      x, y = np.asarray(a.read(n), np.float32), np.asarray(b.read(n), np.float32)
      out["max_abs"] = max(out["max_abs"], float(np.abs(x - y).max()))
      out["differing"] += int((x != y).sum())
      out["total"] += x.size
      mod = n.rsplit(".", 1)[0]
      if mod in ad.modules:
        m = ad.modules[mod]
        exact = (np.asarray(base.read(n), np.float64)
                 + m["scale"] * (m["B"].astype(np.float64) @ m["A"].astype(np.float64)))
        rounded = exact.astype(ml_dtypes.bfloat16).astype(np.float32)
        out["ours_vs_exact"] = max(out["ours_vs_exact"], float(np.abs(x - exact).max()))
        out["peft_vs_exact"] = max(out["peft_vs_exact"], float(np.abs(y - exact).max()))
        out["ours_ulps"] += int((x != rounded).sum())
        out["peft_ulps"] += int((y != rounded).sum())
  return out


def compare_extract(ours: Path, theirs: Path) -> dict:
  a, b = jp.adapt.read_peft(ours), jp.adapt.read_peft(theirs)
  if set(a.modules) != set(b.modules) or set(a.modules_to_save) != set(b.modules_to_save):
    raise RuntimeError("extracted module sets differ")
  rel = 0.0
  for m in b.modules:
    x, y = a.delta_hf(m), b.delta_hf(m)
    rel = max(rel, float(np.abs(x - y).max() / max(np.abs(y).max(), 1e-30)))
  mts_equal = all(np.array_equal(np.asarray(a.modules_to_save[n], np.float32),
                                 np.asarray(b.modules_to_save[n], np.float32))
                  for n in b.modules_to_save)
  return dict(modules=len(b.modules), max_rel_product=rel, modules_to_save_equal=mts_equal,
              same_config=all(a.config[k] == b.config[k] for k in ("r", "lora_alpha",
                                                                    "rank_pattern")))


def main() -> int:
  ap = argparse.ArgumentParser()
  ap.add_argument("--size", default="medium", choices=sorted(SIZES))
  ap.add_argument("--work", default="/tmp/lora_bench")
  ap.add_argument("--out", default="benchmarks/results/lora.md")
  ap.add_argument("--extract-size", default="small", choices=sorted(SIZES),
                  help="model of the extraction run (SVDs are slow on the shared CPU)")
  ap.add_argument("--rank", type=int, default=64)
  args = ap.parse_args()
  work = Path(args.work)
  work.mkdir(parents=True, exist_ok=True)
  paths = build(work, args.size)
  epaths = paths if args.extract_size == args.size else build(work, args.extract_size)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  rows = []
  outs = {k: work / f"out-{k}" for k in ("jp_merge", "peft_merge", "jp_extract", "mk_extract")}
  for o in outs.values():
    shutil.rmtree(o, ignore_errors=True)
  jp_merge = timed([sys.executable, "-m", "jaxparams.cli.main", "lora", "merge",
                    str(paths["base"]), str(paths["adapter"]), str(outs["jp_merge"])], env)
  peft_merge = timed([TORCH_PY, "-c", PEFT_MERGE, str(paths["base"]), str(paths["adapter"]),
                      str(outs["peft_merge"])])
  cm = compare_merge(paths, outs["jp_merge"], outs["peft_merge"])
  jp_ext = timed([sys.executable, "-m", "jaxparams.cli.main", "lora", "extract",
                  str(epaths["base"]), str(epaths["ft"]), str(outs["jp_extract"]), "--rank",
                  str(args.rank)], env)
  mk_ext = timed([MERGEKIT_EXTRACT, "--model", str(epaths["ft"]), "--base-model",
                  str(epaths["base"]), "--out-path", str(outs["mk_extract"]), "--max-rank",
                  str(args.rank)])
  ce = compare_extract(outs["jp_extract"], outs["mk_extract"])
  rows = dict(merge=dict(jaxparams=jp_merge, peft=peft_merge, **cm),
              extract=dict(jaxparams=jp_ext, mergekit=mk_ext, **ce))
  print(json.dumps(rows, indent=1, default=str))
  write_md(Path(args.out), args, paths, rows, epaths)
  return 0


def write_md(path: Path, args, paths, rows, epaths) -> None:
  import jax
  m, e = rows["merge"], rows["extract"]
  date = datetime.date.today().isoformat()
  lines = [
      "## LoRA merge and extraction vs PEFT and mergekit-extract-lora (`benchmarks/lora.py`)",
      "",
      f"{date}; {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
      f"**shared with ~8 other engineers' jobs** (timings are noisy, each run once), JAX "
      f"{jax.__version__} CPU; torch venv: peft 0.21.2, transformers 5.24, mergekit 0.1.5. "
      f"Models: bf16 Llama `{args.size}` ({paths['params'] / 1e6:.0f}M params) for the merge, "
      f"`{args.extract_size}` ({epaths['params'] / 1e6:.0f}M params) for the extraction (modest "
      "sizes because the CPU is shared; a 688x256 SVD took ~1.4 s in numpy during the run). "
      "Adapter: PEFT LoRA r 16 on q/k/v/o/gate/up/down, fp32. "
      "Fresh processes under `/usr/bin/time -v` (start-up and compilation included).",
      "",
      "| task | jaxparams s | peer s | jaxparams peak RSS GB | peer peak RSS GB |",
      "|---|---|---|---|---|",
      f"| merge adapter, write HF folder (peer: PEFT merge_and_unload + save_pretrained) | "
      f"{m['jaxparams'][0]:.1f} | {m['peft'][0]:.1f} | {m['jaxparams'][1]:.2f} | "
      f"{m['peft'][1]:.2f} |",
      f"| extract rank-{args.rank} LoRA (peer: mergekit-extract-lora) | {e['jaxparams'][0]:.1f} | "
      f"{e['mergekit'][0]:.1f} | {e['jaxparams'][1]:.2f} | {e['mergekit'][1]:.2f} |",
      "",
      f"Merged tensors: max abs diff jaxparams vs PEFT {m['max_abs']:.3g} "
      f"({m['differing']:,} of {m['total']:,} bf16 values differ). Against the float64 merge "
      f"rounded once to bf16: jaxparams differs in {m['ours_ulps']:,} values, PEFT in "
      f"{m['peft_ulps']:,}; max abs error vs the exact float64 merge: jaxparams "
      f"{m['ours_vs_exact']:.3g}, PEFT {m['peft_vs_exact']:.3g} (both compute the delta in fp32 "
      "and round the sum to bf16).",
      "",
      f"Extraction: {e['modules']} modules; max relative difference of `B @ A` per module vs "
      f"mergekit {e['max_rel_product']:.3g} (bf16 factors); modules_to_save tensors identical: "
      f"{e['modules_to_save_equal']}; same r / lora_alpha / rank_pattern: {e['same_config']}.",
      "",
  ]
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines))


if __name__ == "__main__":
  sys.exit(main())
