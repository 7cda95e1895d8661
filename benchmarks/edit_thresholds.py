"""Do MEMIT's lambda and AlphaEdit's null space travel across models? One batch per setting.

  python benchmarks/edit_thresholds.py --lm DIR [--lm DIR2] [--bert DIR] [--batch 100]
      [--layers 0] [--defaults-only] --out RESULT.json

``--lm``: a facts LM folder (``hf/`` and ``data/``, as ``train_facts_lm`` writes); ``--bert``: a
facts BERT-MLM work folder (``train_facts_mlm``). For each model, one batch of ``--batch`` edits
at ``--layers`` (default: layer 0, the benchmark's site; targets at the last) with MEMIT and
AlphaEdit under their reference constants (``lambda_mode='absolute'`` 15000, the width-scaled
15000 d/16384; ``nullspace_mode='absolute'`` 2e-2 with L2 10) and under the scale-free modes at
several values, the record's defaults marked. Everything else is the record's default (target optimisation included), so the
default rows are what ``jaxparams edit`` does. The target optimisation depends on none of these
settings: it runs once per method and model (memoised here) and only the closed-form update
changes between rows. Scores as ``benchmarks/edit_facts.py``. Writes ``--out`` and a markdown
table beside it.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import platform
import sys
import time

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import edit_facts  # pylint: disable=g-import-not-at-top,wrong-import-position
import edit_facts_bert  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxparams.edit import facts, facts_lm, facts_mlm, methods, sites, stats  # pylint: disable=wrong-import-position
from jaxparams.edit import registry as edit_registry  # pylint: disable=wrong-import-position
from jaxparams.edit import requests as req_lib  # pylint: disable=wrong-import-position
from jaxparams.edit import targets as tgt_lib  # pylint: disable=wrong-import-position

SETTINGS = {
    "memit": [("absolute", 15000.0), ("absolute", "width"), ("relative", 0.03),
              ("relative", 0.1), ("relative", 0.3), ("relative", 1.0),
              ("relative", 0.1, {"clamp_norm_factor": 4.0})],
    "alphaedit": [("absolute", 2e-2, "absolute", 10.0), ("absolute", 0.1, "absolute", 10.0),
                  ("energy", 0.005, "relative", 0.1), ("energy", 0.01, "relative", 0.1),
                  ("energy", 0.02, "relative", 0.1), ("energy", 0.05, "relative", 0.1),
                  ("energy", 0.02, "relative", 0.01), ("energy", 0.02, "relative", 1.0),
                  ("relative", 1e-3, "relative", 0.1),
                  ("energy", 0.02, "relative", 0.1, {"clamp_norm_factor": 4.0})],
}


def _memo_targets():
  """Memoises the target optimisation (same params, layer and settings -> same targets)."""
  real, cache = tgt_lib.optimize_targets, {}

  def memo(module, params, batch, *, layer, site, hp):
    key = (id(params), layer, site, hp, batch.ids.tobytes())
    if key not in cache:
      cache[key] = real(module, params, batch, layer=layer, site=site, hp=hp)
    return cache[key]
  methods.tgt_lib.optimize_targets = memo


def _model(kind, path):
  path = pathlib.Path(path)
  if kind == "lm":
    lm = facts_lm.load_facts_lm(path / "hf", path / "data")
    fs = lm.facts
    texts = facts.stats_sentences(fs, "other_subjects", fs.edits)
    batches = stats.text_batches(lm.tokenizer, texts)
    return lm, batches, edit_facts.Scorer(lm), facts_lm.recall(lm)["accuracy"]
  lm = facts_mlm.train_facts_mlm(path)   # reuses the finished run in the folder
  fs = lm.facts
  edited = {(e.subject, e.relation) for e in fs.edits}
  kept = [(f, p) for f in fs.facts for p in fs.relations[f.relation]
          if (f.subject, f.relation) not in edited]
  texts = [facts.sentence(p, f.subject, f.object) for f, p in kept]
  texts += [facts.sentence(p, f.subject) + f" {sites.MASK}" for f, p in kept]
  batches = stats.text_batches_mlm(lm.tokenizer, texts, seq_len=32)
  return lm, batches, edit_facts_bert.Scorer(lm), facts_mlm.recall(lm)["accuracy"]


def parse_layers(text: str) -> tuple[int, ...]:
  """``'0'``, ``'0-2'`` or ``'0,2,3'`` -> sorted layer indices.

  Example:
    >>> parse_layers('1-3'), parse_layers('0,2')
    ((1, 2, 3), (0, 2))
  """
  out = set()
  for part in text.split(","):
    a, _, b = part.strip().partition("-")
    if not a.isdigit() or (b and not b.isdigit()):
      raise ValueError(f"--layers: expected 'i', 'i-j' or 'i,j,...', found {text!r}")
    out.update(range(int(a), int(b or a) + 1))
  return tuple(sorted(out))


def run_model(kind, path, n, layers=(0,)):
  lm, batches, score, recall = _model(kind, path)
  layer = layers[-1]  # the targets' layer (MEMIT/AlphaEdit spread the residual over all)
  wanted = {sites.kernel_path(i, lm.module) for i in layers}
  where = lambda p, _leaf: p in wanted
  st = stats.key_stats(lm.module, lm.params, batches, layers=tuple(layers))
  cov = {i: st[i].gram for i in layers}
  d_ff = int(cov[layer].shape[0])
  tpl = req_lib.context_templates(lm.module, lm.params, lm.tokenizer)
  groups = [["{}"], tpl[1:6]]
  reqs = req_lib.requests_from_edits(lm.facts)[:n]
  edits = list(lm.facts.edits)[:n]
  call = lambda p: score(p, edits)
  cfg = lm.config
  out = {"layers": list(layers),
         "model": {"kind": kind, "path": str(path), "hidden": cfg.hidden_size, "d_ff": d_ff,
                   "layers": cfg.num_hidden_layers, "facts": len(lm.facts.facts),
                   "recall": recall, "stats_tokens": int(st[layer].count)},
         "unedited": call(lm.params), "rows": []}
  eig = np.linalg.eigvalsh(np.asarray(cov[layer], np.float64))[::-1]
  out["model"]["c0_eigen"] = {"max": float(eig[0]), "trace": float(eig.sum()),
                              "median": float(np.median(eig))}
  print(out["model"], flush=True)
  for name, rows in SETTINGS.items():
    for row in rows:
      tgt = row[-1] if row and isinstance(row[-1], dict) else {}
      row = row[:-1] if tgt else row
      if not row:  # the record's defaults, as `jaxparams edit` uses them
        hp = edit_registry.make_params(name, {})
      elif name == "memit":
        mode, w = row
        w = 15000.0 * d_ff / 16384 if w == "width" else w
        hp = edit_registry.make_params("memit", {"lambda_mode": mode, "mom2_update_weight": w,
                                                 "target": tgt})
      else:
        hp = edit_registry.make_params("alphaedit", dict(zip(
            ("nullspace_mode", "nullspace_threshold", "l2_mode", "L2"), row), target=tgt))
      t0 = time.perf_counter()
      if name == "memit":
        new, d = methods.memit(lm.module, lm.params, lm.tokenizer, reqs, cov=cov, where=where,
                               templates=groups, hp=hp)
      else:
        new, d, _ = methods.alphaedit(lm.module, lm.params, lm.tokenizer, reqs,
                                      state=methods.alpha_state(cov, hp), where=where,
                                      templates=groups, hp=hp)
      jax.block_until_ready(new)
      dt = time.perf_counter() - t0
      sc = call(new)
      default = hp == edit_registry.get(name).defaults()
      r = {"method": name, "setting": {k: v for k, v in vars(hp).items() if k != "target"},
           "target": tgt,
           "default": default, "seconds": dt, **sc,
           **{k: d.meta[k] for k in ("lambda", "L2", "nullspace_dim") if k in d.meta}}
      out["rows"].append(r)
      print(name, r, flush=True)
  return out


def write_md(results, path):
  lines = ["# Scale-free MEMIT lambda and AlphaEdit null space (benchmarks/edit_thresholds.py)",
           "", f"Machine: {results['machine']}. One batch of {results['batch']} "
           f"edits at layer(s) {results.get('layers', [0])}; everything but the row's setting "
           "is the record's default (`jaxparams edit`'s). **bold**: the record's default.", ""]
  for m in results["models"]:
    mm = m["model"]
    lines += [f"## {mm['kind']} `{mm['path']}`, batch of {m.get('batch', results['batch'])}: "
              f"hidden {mm['hidden']}, d_ff {mm['d_ff']}, "
              f"{mm['layers']} layers, {mm['facts']} facts, recall {mm['recall']:.3f}, C0 from "
              f"{mm['stats_tokens']} tokens", "",
              f"Unedited: efficacy {m['unedited']['efficacy']:.3f}, locality "
              f"{m['unedited']['locality']:.3f}.", "",
              "| method | setting | lambda / L2 used | null-space dim | efficacy | "
              "generalization | locality | locality (argmax) |", "|---|---|---|---|---|---|---|---|"]
    for r in m["rows"]:
      s = r["setting"]
      if r["method"] == "memit":
        desc = f"{s['lambda_mode']} {s['mom2_update_weight']:g}"
        used = ", ".join(f"{v:.4g}" for v in r.get("lambda", {}).values())
      else:
        desc = (f"{s['nullspace_mode']} {s['nullspace_threshold']:g}, L2 {s['l2_mode']} "
                f"{s['L2']:g}")
        used = ", ".join(f"{v:.4g}" for v in r.get("L2", {}).values())
      dim = ", ".join(str(v) for v in r.get("nullspace_dim", {}).values()) or "-"
      if r.get("target"):
        desc += ", target " + ", ".join(f"{k} {v:g}" for k, v in r["target"].items())
      b = "**" if r["default"] else ""
      lines.append(f"| {r['method']} | {b}{desc}{b} | {used} | {dim} | {b}{r['efficacy']:.3f}{b}"
                   f" | {r['generalization']:.3f} | {r['locality']:.3f} | "
                   f"{r['locality_argmax']:.3f} |")
    lines.append("")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--lm", action="append", default=[], help="facts LM folder (hf/, data/)")
  ap.add_argument("--bert", action="append", default=[], help="facts BERT-MLM work folder")
  ap.add_argument("--batch", default="100", help="edits per batch; a comma list runs each size "
                  "(the first edits of the set), e.g. 10,25,50,100")
  ap.add_argument("--defaults-only", action="store_true",
                  help="only the records' default settings (the capacity curve over --batch)")
  ap.add_argument("--layers", default="0", help="edited layers: 'i', 'i-j' or 'i,j,...' (targets "
                  "at the last)")
  ap.add_argument("--only", default="", help="comma-separated methods (default: both)")
  ap.add_argument("--out", required=True)
  a = ap.parse_args(argv)
  if a.defaults_only:
    for k in SETTINGS:
      SETTINGS[k] = [()]
  if a.only:
    for k in list(SETTINGS):
      if k not in a.only.split(","):
        del SETTINGS[k]
  _memo_targets()
  layers = parse_layers(a.layers)
  sizes = [int(b) for b in str(a.batch).split(",")]
  res = {"batch": a.batch, "layers": list(layers), "machine": f"{platform.machine()}, {jax.device_count()} "
                                      f"{jax.devices()[0].platform} device(s)", "models": []}
  out = pathlib.Path(a.out)
  for kind, paths in (("lm", a.lm), ("bert", a.bert)):
    for p in paths:
      for n in sizes:
        res["models"].append(dict(run_model(kind, p, n, layers), batch=n))
      out.parent.mkdir(parents=True, exist_ok=True)
      out.write_text(json.dumps(res, indent=1))
      write_md(res, out.with_suffix(".md"))
  print(f"wrote {out} and {out.with_suffix('.md')}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
