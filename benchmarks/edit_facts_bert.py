"""CounterFact-style editing benchmark on a BERT masked LM trained here (facts BERT-MLM).

  python benchmarks/edit_facts_bert.py [--facts F --relations R --edits E]
      [--methods rome,memit,alphaedit] [--workdir DIR] [--out RESULT.json]

Trains (or reuses, in ``--workdir``) the facts BERT-MLM of :mod:`jaxparams.edit.facts_mlm`
(all-MiniLM-L6-v2 has no masked-LM head), then edits the FFN output dense
(``layers_{l}/mlp/output/kernel``) with ROME (``--n-rome`` single edits, each from the original
model) and MEMIT/AlphaEdit (one batch of ``--batch`` edits). Prompts are cloze rows
``[CLS] prompt [MASK] [SEP]``; scores as ``benchmarks/edit_facts.py`` (same pairs and
neighbours), with log P read at the mask:

* efficacy: P(target_new) > P(old object) on the edit prompt; generalization: the same on the
  relation's other prompts; locality: neighbours (other subjects, same relation) keep
  P(their object) > P(target_new); ``locality_argmax``: unedited facts whose argmax object is
  unchanged; ``margin_*``: mean log P(new) - log P(old).

Writes the JSON and ``benchmarks/results/edit_bert.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import platform
import re
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from edit_facts import _neighbours, _pairs, rome_singles, target_params  # pylint: disable=g-import-not-at-top,wrong-import-position

from jaxparams.edit import arch, facts, facts_mlm, methods, stats  # pylint: disable=wrong-import-position
from jaxparams.edit import registry as edit_registry  # pylint: disable=wrong-import-position
from jaxparams.edit import requests as req_lib  # pylint: disable=wrong-import-position

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


class Scorer:
  """Scores params on a set of edits at the ``[MASK]`` of cloze prompts."""

  def __init__(self, lm, n_fixed=300):
    self.lm = lm
    fs = lm.facts
    self.fixed = list(fs.facts)[:: max(1, len(fs.facts) // n_fixed)][:n_fixed]
    self.fixed_prompts = [facts.sentence(fs.relations[f.relation][0], f.subject)
                          for f in self.fixed]
    self.base_argmax = self._argmax(lm.params)

  def _argmax(self, params):
    rec = []
    for s in range(0, len(self.fixed_prompts), 256):
      chunk = self.fixed_prompts[s:s + 256]
      ids = [arch.encode_request_mlm(self.lm.tokenizer, req_lib.EditRequest("{}", p, "x"), "{}",
                                     n_mask=1) for p in chunk]
      t = -(-max(len(r[0]) for r in ids) // 8) * 8
      a = np.zeros((len(ids), t), np.int32)
      m = np.zeros_like(a)
      for i, r in enumerate(ids):
        a[i, :len(r[0])] = r[0]
        m[i, :len(r[0])] = 1
      pos = jnp.asarray([r[2][0] for r in ids])
      rec.append(np.asarray(facts_mlm._argmax_at(self.lm.module, params, jnp.asarray(a),  # pylint: disable=protected-access
                                                 jnp.asarray(m), pos)))
    return np.concatenate(rec)

  def _lp(self, params, prompts, targets_):
    return np.asarray(arch.mlm_target_logprobs(self.lm.module, params, self.lm.tokenizer,
                                               prompts, targets_))

  def __call__(self, params, edits):
    fs = self.lm.facts
    out = {}
    for which, key in (("edit", "efficacy"), ("para", "generalization")):
      p, n, o = _pairs(fs, edits, which)
      m = self._lp(params, p, n) - self._lp(params, p, o)
      out[key] = float(np.mean(m > 0))
      out[f"margin_{key}"] = float(np.mean(m))
    p, t, n = _neighbours(fs, edits)
    out["locality"] = float(np.mean(self._lp(params, p, t) > self._lp(params, p, n)))
    edited = {e.subject for e in edits}
    keep = np.asarray([f.subject not in edited for f in self.fixed])
    out["locality_argmax"] = float(np.mean((self._argmax(params) == self.base_argmax)[keep]))
    return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--facts"), ap.add_argument("--relations"), ap.add_argument("--edits")
  ap.add_argument("--methods", default="rome,memit,alphaedit")
  ap.add_argument("--workdir", default="/tmp/jaxparams_edit_facts_bert")
  ap.add_argument("--out", default=str(RESULTS / "edit_bert.json"))
  ap.add_argument("--md", default=None, help="markdown table (default: --out with .md)")
  ap.add_argument("--steps", type=int, default=0, help="facts MLM training steps (0: default)")
  ap.add_argument("--n-rome", type=int, default=12)
  ap.add_argument("--batch", type=int, default=50)
  ap.add_argument("--rome-layer", type=int, default=0)
  ap.add_argument("--memit-layers", default="0,1")
  ap.add_argument("--lam", type=float, default=None, help="MEMIT absolute mom2_update_weight "
                  "(default: the record's relative lambda)")
  ap.add_argument("--v-steps", type=int, default=20)
  ap.add_argument("--v-lr", type=float, default=0.5)
  ap.add_argument("--clamp", type=float, default=4.0, help="ROME clamp_norm_factor")
  ap.add_argument("--z-steps", type=int, default=25)
  ap.add_argument("--z-clamp", type=float, default=4.0)
  ap.add_argument("--fact-token", default="subject_last")
  ap.add_argument("--stats-cloze", type=int, default=1, help="1: key statistics also over the "
                  "cloze rows '[CLS] prompt [MASK] [SEP]' of unedited facts (0: sentences only)")
  a = ap.parse_args(argv)
  a.md = a.md or str(pathlib.Path(a.out).with_suffix(".md"))  # results only where --out says
  meths = [m.strip() for m in a.methods.split(",") if m.strip()]
  valid = edit_registry.checkpoint_names()   # the locate-then-edit methods (weights, a Delta)
  bad = [m for m in meths if m not in valid]
  if bad:
    raise SystemExit(f"unknown method(s) {bad}; valid here: {', '.join(valid)}")

  t0 = time.perf_counter()
  lm = facts_mlm.train_facts_mlm(a.workdir, a.facts, a.relations, a.edits, steps=a.steps)
  t_train = time.perf_counter() - t0
  fs = lm.facts
  rec, rec1 = facts_mlm.recall(lm), facts_mlm.recall(lm, prompts="first")
  print(f"facts MLM: {len(fs.facts)} facts, recall {rec['accuracy']:.3f} (edit prompt "
        f"{rec1['accuracy']:.3f}), {t_train:.0f} s", flush=True)
  edited_pairs = {(e.subject, e.relation) for e in fs.edits}
  kept = [(f, p) for f in fs.facts for p in fs.relations[f.relation]
          if (f.subject, f.relation) not in edited_pairs]
  texts = [facts.sentence(p, f.subject, f.object) for f, p in kept]
  if a.stats_cloze:  # the queries the model answers: keys at [MASK] rows are preserved too
    texts += [facts.sentence(p, f.subject) + f" {arch.MASK}" for f, p in kept]
  layers = sorted({a.rome_layer, *[int(x) for x in a.memit_layers.split(",")]})
  t0 = time.perf_counter()
  st = stats.key_stats(lm.module, lm.params, arch.text_batches_mlm(lm.tokenizer, texts,
                                                                   seq_len=32), layers=layers)
  jax.block_until_ready([s.xtx for s in st.values()])
  t_stats = time.perf_counter() - t0
  cov = {l: s.gram for l, s in st.items()}
  tpl = req_lib.context_templates(lm.module, lm.params, lm.tokenizer)
  groups = [["{}"], tpl[1:6]]
  reqs = req_lib.requests_from_edits(fs)
  edits = list(fs.edits)
  score = Scorer(lm)
  tp, tpm = target_params(a)
  where = re.compile("|".join(f"layers_{l}/mlp/output/kernel"
                              for l in a.memit_layers.split(",")))
  results = {"_setup": {
      "facts": len(fs.facts), "recall": rec["accuracy"], "recall_edit_prompt": rec1["accuracy"],
      "train_seconds": t_train, "model": {k: getattr(lm.config, k) for k in (
          "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")},
      "stats_tokens": int(st[layers[0]].count), "stats_seconds": t_stats,
      "stats_cloze": bool(a.stats_cloze), "rome_layer": a.rome_layer, "memit_layers": a.memit_layers, "lambda": "record" if a.lam is None else a.lam,
      "fact_token": a.fact_token, "context_templates": tpl[1:4],
      "target": {"v_steps": a.v_steps, "v_lr": a.v_lr, "rome_clamp": a.clamp,
                 "z_steps": a.z_steps, "z_clamp": a.z_clamp},
      "machine": f"{platform.machine()} {platform.processor()}, {jax.device_count()} "
                 f"{jax.devices()[0].platform} device(s)"}}
  results["unedited"] = score(lm.params, edits[:a.batch])
  print("unedited", results["unedited"], flush=True)
  if "rome" in meths:
    results["rome"] = rome_singles(lm, edits, reqs, score, cov, tpl, tp, a.n_rome,
                                   f"layers_{a.rome_layer}/mlp/output/kernel")
  for name in [m for m in meths if m != "rome"]:
    t0 = time.perf_counter()
    rq = reqs[:a.batch]
    if name == "memit":
      new, _ = methods.memit(lm.module, lm.params, lm.tokenizer, rq, cov=cov, where=where,
                             templates=groups, hp=edit_registry.make_params(
                                 "memit", {"target": dataclasses.asdict(tpm), **(
                                     {} if a.lam is None else {"lambda_mode": "absolute",
                                                               "mom2_update_weight": a.lam})}))
    else:
      hp = edit_registry.make_params("alphaedit", {"target": dataclasses.asdict(tpm)})
      state = methods.alpha_state({l: cov[l] for l in methods.edited_layers(lm.params, where)},
                                  hp)
      new, _, _ = methods.alphaedit(lm.module, lm.params, lm.tokenizer, rq, state=state,
                                    where=where, templates=groups, hp=hp)
    jax.block_until_ready(new)
    dt = time.perf_counter() - t0
    results[name] = score(new, edits[:a.batch])
    results[name].update(setting=f"one batch of {len(rq)}", seconds_per_batch=dt)
    print(name, results[name], flush=True)
  pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(a.out).write_text(json.dumps(results, indent=1))
  write_md(results, pathlib.Path(a.md))
  print(f"wrote {a.out} and {a.md}")


def write_md(results, path):
  s = results["_setup"]
  lines = ["# Knowledge editing on a BERT masked LM (benchmarks/edit_facts_bert.py)", "",
           f"Machine: {s['machine']} (2 CPU cores shared with other engineers' jobs: times are "
           f"upper bounds). Facts BERT-MLM trained here ({s['model']}, {s['train_seconds']:.0f} s"
           f"): {s['facts']} facts, recall at [MASK] {s['recall']:.3f} over all phrasings, "
           f"{s['recall_edit_prompt']:.3f} on the edit prompts. Edited kernel: the FFN output "
           f"dense `layers_{{l}}/mlp/output/kernel`; keys at the subject's last token "
           f"(fact_token={s['fact_token']}); key statistics from {s['stats_tokens']} tokens of "
           f"unedited facts ({s['stats_seconds']:.1f} s; "
           f"{'sentences and their cloze rows' if s.get('stats_cloze') else 'sentences only'}); ROME layer {s['rome_layer']}, "
           f"MEMIT/AlphaEdit layers {s['memit_layers']}, lambda {s['lambda']}; target "
           f"optimisation {s['target']}.", "",
           "| method | setting | efficacy | generalization | locality | locality (argmax) | "
           "margin edit | margin para | time |", "|---|---|---|---|---|---|---|---|---|"]
  for k, r in results.items():
    if k.startswith("_"):
      continue
    t = r.get("seconds_per_edit") or r.get("seconds_per_batch")
    lines.append(f"| {k} | {r.get('setting', '-')} | {r['efficacy']:.3f} | "
                 f"{r['generalization']:.3f} | {r['locality']:.3f} | {r['locality_argmax']:.3f} | "
                 f"{r['margin_efficacy']:.2f} | {r['margin_generalization']:.2f} | "
                 + (f"{t:.1f} s" if t else "-") + " |")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  sys.exit(main())
