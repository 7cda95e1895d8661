"""CounterFact-style editing benchmark on a facts LM trained here.

  python benchmarks/edit_facts.py [--facts F --relations R --edits E]
      [--methods rome,memit,alphaedit,grace,wise,ft] [--out RESULT.json] [--workdir DIR | --lm DIR]

Trains (or reuses, in ``--workdir``) the facts LM of ``configs/facts_lm.py`` on the facts, then
for each method measures, in [0, 1]:

* efficacy: P(target_new) > P(old object) on the edit prompt (relation's first prompt);
* generalization: the same on the relation's other prompts (paraphrases);
* locality: for unedited facts of other subjects with the same relation, P(their object) >
  P(the edit's target_new) (CounterFact's neighborhood score); ``locality_argmax``: fraction of
  a fixed set of unedited facts whose argmax object is unchanged;
* ``margin_*``: mean log P(target_new) - log P(old) on edit prompts / paraphrases.

Settings: single ROME edits (each from the original model), one batch of ``--batch`` edits for
MEMIT/AlphaEdit/GRACE/WISE/FT, and ``--seq-edits`` sequential edits in batches of ``--seq-batch``
(``<method>_seq`` keys, with a ``curve`` per batch). Writes the JSON and
``benchmarks/results/edit.md``. ``--seq-only`` runs only the sequential setting (scores and
cumulative edit time after every batch) into ``benchmarks/results/edit_seq.{json,md}``;
``--combine A.json,B.json`` joins the sequential runs of separate processes.

Defaults are the method records' own (``jaxparams edit``'s), overridden only by the flags
given: keys and targets at the subject's last token; ROME at layer 0 (targets: 20 steps, lr
0.5, clamp 4); MEMIT/AlphaEdit at layer 0 (25 steps, lr 0.5, clamp 0.75; lambda, null space and
L2 scale-free: ``--lam width`` / ``--alpha-threshold`` / ``--alpha-l2`` for the reference's
absolute constants); GRACE and WISE at the references' depth (layer 27 of 32 scaled: the last
layer of a 4-layer LM), GRACE's radius 0.3 x the key's norm; key statistics from the facts of
subjects that no edit of the run names (``--stats-from other_subjects``, the analogue of the
reference's Wikipedia statistics; ``auto`` falls back to the unedited facts on sets whose edits
name nearly every subject). For 1000 sequential edits, generate the 1000-edit set
(``benchmarks/make_facts_set.py --subjects 1300 --relations-per-subject 2 --edits 1000
--distinct-subjects --out DIR``), train its LM with ``train_facts_lm(WORK, ..., size='xwide')``
(keys 2048 wide; ``'wide'``: 512) and pass ``--lm WORK --seq-only --seq-edits 1000``.
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

from jaxparams.edit import evaluate, facts, facts_lm, ft, grace, methods, stats, targets, wise
from jaxparams.train.facts_lm import train_facts_lm
from jaxparams.models import Llama
from jaxparams.edit import registry as edit_registry
from jaxparams.edit import requests as req_lib

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _pairs(fs, edits, which):
  prompts, new, old = [], [], []
  for e in edits:
    ps = fs.relations[e.relation]
    for p in (ps[:1] if which == "edit" else ps[1:]):
      prompts.append(facts.sentence(p, e.subject))
      new.append(e.target_new)
      old.append(fs.object_of(e.subject, e.relation))
  return prompts, new, old


def _neighbours(fs, edits, k=5, seed=0, only=None):
  rng = np.random.default_rng(seed)
  edited = {e.subject for e in edits}
  prompts, true, new = [], [], []
  by_rel = {}
  for f in fs.facts:
    if f.subject not in edited and (only is None or f.subject in only):
      by_rel.setdefault(f.relation, []).append(f)
  for e in edits:
    pool = [f for f in by_rel.get(e.relation, []) if f.object != e.target_new]
    for j in rng.choice(len(pool), size=min(k, len(pool)), replace=False):
      f = pool[j]
      prompts.append(facts.sentence(fs.relations[f.relation][0], f.subject))
      true.append(f.object)
      new.append(e.target_new)
  return prompts, true, new


class Scorer:
  """Scores params on a set of edits (everything batched and jitted)."""

  def __init__(self, lm, n_fixed=300, only=None):
    self.lm, self.only = lm, only
    fs = lm.facts
    pool = [f for f in fs.facts if only is None or f.subject in only]
    self.fixed = pool[:: max(1, len(pool) // n_fixed)][:n_fixed]
    self.fixed_enc = evaluate.encode_prompts(
        lm.tokenizer, [facts.sentence(fs.relations[f.relation][0], f.subject) for f in self.fixed])
    self.base_argmax = np.asarray(jnp.argmax(
        evaluate.next_logits(lm.module, lm.params, self.fixed_enc), -1))

  def _lp(self, params, prompts, targets_, module=None):
    return np.asarray(evaluate.target_logprobs(module or self.lm.module, params,
                                               self.lm.tokenizer, prompts, targets_))

  def __call__(self, params, edits, module=None):
    fs = self.lm.facts
    module = module or self.lm.module
    out = {}
    for which, key in (("edit", "efficacy"), ("para", "generalization")):
      p, n, o = _pairs(fs, edits, which)
      m = self._lp(params, p, n, module) - self._lp(params, p, o, module)
      out[key] = float(np.mean(m > 0))
      out[f"margin_{key}"] = float(np.mean(m))
    p, t, n = _neighbours(fs, edits, only=self.only)
    out["locality"] = float(np.mean(self._lp(params, p, t, module) > self._lp(params, p, n,
                                                                                   module)))
    edited = {e.subject for e in edits}
    keep = np.asarray([f.subject not in edited for f in self.fixed])
    am = np.asarray(jnp.argmax(evaluate.next_logits(module, params, self.fixed_enc), -1))
    out["locality_argmax"] = float(np.mean((am == self.base_argmax)[keep]))
    return out


def target_params(a):
  """(ROME's v*, MEMIT/AlphaEdit's z) target optimisation settings: each record's own defaults,
  with the command line's flags over them where given."""
  def over(base, **kw):
    return dataclasses.replace(base, **{k: v for k, v in kw.items() if v is not None})
  dflt = {n: edit_registry.get(n).defaults() for n in ("rome", "memit")}
  return (over(dflt["rome"].target, fact_token=a.fact_token, v_num_grad_steps=a.v_steps,
               v_lr=a.v_lr, clamp_norm_factor=a.clamp),
          over(dflt["memit"].target, fact_token=a.fact_token, v_num_grad_steps=a.z_steps,
               v_lr=a.v_lr, clamp_norm_factor=a.z_clamp))


def method_params(a, name: str, fields: dict) -> object:
  """The parameters of registry method ``name``: its defaults, the benchmark's flags
  (``fields``), then ``--set NAME.FIELD=VALUE`` (unknown fields raise listing the valid ones)."""
  hp = edit_registry.make_params(name, fields, where="benchmark flags")
  own = [x.split(".", 1)[1] for x in getattr(a, "assign", []) if x.split(".", 1)[0] == name]
  if own:
    hp = edit_registry.make_params(name, edit_registry.parse_assignments(own), base=hp,
                                   where="--set")
  return hp


def rome_singles(lm, edits, reqs, score, cov, templates, target, n, where):
  """ROME single edits, each from the original params: mean scores, median seconds per edit."""
  per, times = [], []
  for e, r in list(zip(edits, reqs))[:n]:
    t0 = time.perf_counter()
    new, _ = methods.rome(lm.module, lm.params, lm.tokenizer, r, cov=cov, where=where,
                          templates=templates,
                          hp=edit_registry.make_params("rome",
                                                       {"target": dataclasses.asdict(target)}))
    jax.block_until_ready(new)
    times.append(time.perf_counter() - t0)
    per.append(score(new, [e]))
  out = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
  out.update(setting=f"{len(per)} single edits", seconds_per_edit=float(
      np.median(times[1:] or times)))
  print("rome", out, flush=True)
  return out


def main(argv=None):
  dflt = {n: edit_registry.get(n).defaults() for n in edit_registry.names()}  # one place
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--facts"), ap.add_argument("--relations"), ap.add_argument("--edits")
  ap.add_argument("--methods", default="rome,memit,alphaedit,grace,wise,ft")
  ap.add_argument("--out", default=str(RESULTS / "edit.json"))
  ap.add_argument("--md", default=None, help="markdown table (default: --out with .md)")
  ap.add_argument("--workdir", default="/tmp/jaxparams_edit_facts")
  ap.add_argument("--lm", default="", help="reuse an exported facts LM: a folder with hf/ and "
                  "data/ (as train_facts_lm writes) instead of training in --workdir")
  ap.add_argument("--steps", type=int, default=0, help="facts LM training steps (0: default)")
  ap.add_argument("--n-rome", type=int, default=20)
  ap.add_argument("--batch", type=int, default=100)
  ap.add_argument("--seq-edits", type=int, default=300)
  ap.add_argument("--seq-batch", type=int, default=100)
  ap.add_argument("--fact-token", default=dflt["rome"].target.fact_token)
  ap.add_argument("--stats-from", default="auto", choices=("auto",) + facts.STATS_SOURCES,
                  help="key statistics from the facts of subjects that no edit of this run "
                  "names (other_subjects: the analogue of the reference's Wikipedia C0), from "
                  "every unedited fact (the edited subjects' other facts included), or from all "
                  "facts; auto (default): other_subjects when they hold >= 20%% of the facts, "
                  "else unedited (the default set's 300 edits name 98 of its 100 subjects)")
  ap.add_argument("--rome-layer", type=int, default=0)
  ap.add_argument("--memit-layers", default="0")
  ap.add_argument("--lam", default="record", help="MEMIT lambda: 'record' (the record's "
                  "default, lambda_mode='relative'), 'width' (absolute 15000 x d_ff / 16384) or "
                  "an absolute number (the reference: 15000)")
  ap.add_argument("--alpha-threshold", type=float, default=None,
                  help="AlphaEdit absolute nullspace_threshold (the reference: 2e-2; default: "
                  "the record's, nullspace_mode='energy')")
  ap.add_argument("--alpha-l2", type=float, default=None,
                  help="AlphaEdit absolute L2 (the reference: 10; default: the record's, "
                  "l2_mode='relative')")
  ap.add_argument("--v-steps", type=int, default=None,
                  help="ROME target optimisation steps (default: the record's)")
  ap.add_argument("--v-lr", type=float, default=None,
                  help="target learning rate of every method (default: each record's)")
  ap.add_argument("--clamp", type=float, default=None,
                  help="ROME clamp_norm_factor (default: the record's, 4)")
  # WISE / GRACE / FT-L / sequential settings (see benchmarks/results/edit_seq.md for why).
  ap.add_argument("--wise-layer", type=int, default=None,
                  help="WISE value matrix (default: the reference's layer 27 of 32, scaled)")
  ap.add_argument("--wise-iters", type=int, default=dflt["wise"].n_iter)
  ap.add_argument("--wise-lr", type=float, default=dflt["wise"].edit_lr)
  ap.add_argument("--wise-nc", type=float, default=dflt["wise"].norm_constraint,
                  help="WISE norm_constraint")
  ap.add_argument("--wise-margin", default=",".join(f"{x:g}" for x in dflt["wise"].act_margin),
                  help="WISE alpha,beta,gamma")
  ap.add_argument("--wise-save", type=int, default=dflt["wise"].save_freq,
                  help="WISE save_freq (merge: 2x)")
  ap.add_argument("--wise-merge", type=int, default=None,
                  help="WISE merge_freq (default: 2 x --wise-save, the reference's ratio)")
  ap.add_argument("--wise-retrieve", action="store_true",
                  help="WISE-Retrieve: a memory per shard, routed to the farthest (reference "
                  "retrieve: True)")
  ap.add_argument("--wise-in-scope", default="target", choices=("target", "all"))
  ap.add_argument("--wise-act-ratio", type=float, default=dflt["wise"].act_ratio)
  ap.add_argument("--wise-mask-ratio", type=float, default=dflt["wise"].mask_ratio)
  ap.add_argument("--wise-templates", type=int, default=11,
                  help="edit rows per request: '{}' plus this many - 1 context templates")
  ap.add_argument("--grace-layer", type=int, default=None,
                  help="GRACE's layer (default: the reference's depth, layer 27 of 32, scaled: "
                  "the last of a 4-layer LM)")
  ap.add_argument("--ft-layer", type=int, default=0)
  ap.add_argument("--ft-tuned", default="25,5e-4,5e-2",
                  help="steps,lr,norm_constraint of the 'ft_tuned' method (a setting that edits)")
  ap.add_argument("--heldout-locality", action="store_true",
                  help="split the never-edited subjects: half give the key statistics, locality "
                  "is scored on the other half only (disjoint from C0, as CounterFact's "
                  "neighbourhood is from the reference's Wikipedia statistics)")
  ap.add_argument("--seq-only", action="store_true",
                  help="only the sequential runs, written to --seq-out / --seq-md")
  ap.add_argument("--seq-out", default=str(RESULTS / "edit_seq.json"))
  ap.add_argument("--seq-md", default=None,
                  help="markdown table of the sequential runs (default: --seq-out with .md)")
  ap.add_argument("--combine", default="", help="comma-separated --seq-out JSON files of "
                  "separate runs: merge them into --seq-out / --seq-md and exit")
  ap.add_argument("--z-steps", type=int, default=None,
                  help="MEMIT/AlphaEdit target steps (default: the record's)")
  ap.add_argument("--z-clamp", type=float, default=None,
                  help="MEMIT/AlphaEdit clamp_norm_factor (default: the record's, 0.75)")
  ap.add_argument("--set", action="append", default=[], dest="assign",
                  metavar="METHOD.NAME=VALUE",
                  help="set any parameter of a method's record on top of the flags above "
                  "(repeatable), e.g. --set alphaedit.fp64=true --set wise.weight_decay=0")
  a = ap.parse_args(argv)
  # Results go only where --out / --seq-out say: the tables sit beside them unless named.
  a.md = a.md or str(pathlib.Path(a.out).with_suffix(".md"))
  a.seq_md = a.seq_md or str(pathlib.Path(a.seq_out).with_suffix(".md"))
  if a.combine:
    return combine_seq(a.combine.split(","), pathlib.Path(a.seq_out), pathlib.Path(a.seq_md))
  meths = [m.strip() for m in a.methods.split(",") if m.strip()]
  valid = tuple(edit_registry.names()) + ("ft_tuned",)
  bad = [m for m in meths if m not in valid]
  if bad:
    raise SystemExit(f"unknown method(s) {bad}; valid here: {', '.join(valid)}")

  t0 = time.perf_counter()
  if a.lm:
    lm = facts_lm.load_facts_lm(pathlib.Path(a.lm) / "hf", pathlib.Path(a.lm) / "data")
  else:
    lm = train_facts_lm(a.workdir, a.facts, a.relations, a.edits, steps=a.steps)
  t_train = time.perf_counter() - t0
  fs = lm.facts
  rec = facts_lm.recall(lm)
  print(f"facts LM: {len(fs.facts)} facts, recall {rec['accuracy']:.3f} ({t_train:.0f} s)")
  n_used = max([a.batch if set(meths) - {"rome"} else 0, a.seq_edits if set(meths) - {"rome"}
                else 0, a.n_rome if "rome" in meths else 0])
  if a.stats_from == "auto":
    named = {e.subject for e in fs.edits[:n_used]}
    a.stats_from = ("other_subjects" if sum(f.subject not in named for f in fs.facts)
                    >= 0.2 * len(fs.facts) else "unedited")
  texts = facts.stats_sentences(fs, a.stats_from, fs.edits[:n_used])
  heldout = None
  if a.heldout_locality:  # every other never-edited subject: out of C0, the locality sets' own
    named = {e.subject for e in fs.edits[:n_used]}
    heldout = set(sorted({f.subject for f in fs.facts} - named)[1::2])
    texts = [t for t in texts if not any(h in t for h in heldout)]
  d_ff = int(lm.config.intermediate_size)
  lam = (a.lam if a.lam == "record" else 15000.0 * d_ff / 16384 if a.lam == "width"
         else float(a.lam))
  layers = sorted({a.rome_layer, *[int(x) for x in a.memit_layers.split(",")]})
  t0 = time.perf_counter()
  st = stats.key_stats(lm.module, lm.params, stats.text_batches(lm.tokenizer, texts), layers=layers)
  jax.block_until_ready([s.xtx for s in st.values()])
  t_stats = time.perf_counter() - t0
  n_tok = int(st[layers[0]].count)
  cov = {l: s.gram for l, s in st.items()}
  tpl = req_lib.context_templates(lm.module, lm.params, lm.tokenizer)
  groups = [["{}"], tpl[1:6]]
  reqs = req_lib.requests_from_edits(fs)
  edits = list(fs.edits)
  score = Scorer(lm, only=heldout)
  tp, tpm = target_params(a)
  late = round(27 / 31 * (lm.config.num_hidden_layers - 1))  # the references' llama-7b depth
  a.grace_layer = late if a.grace_layer is None else a.grace_layer
  a.wise_layer = late if a.wise_layer is None else a.wise_layer
  memit_where = re.compile("|".join(f"layers_{l}/mlp/down_proj/kernel"
                                    for l in a.memit_layers.split(",")))
  results = {"_setup": {"facts": len(fs.facts), "edits_available": len(edits),
                        "recall": rec["accuracy"], "train_seconds": t_train,
                        "stats_tokens": n_tok, "stats_seconds": t_stats,
                        "stats_seconds_per_million_tokens": t_stats / n_tok * 1e6,
                        "fact_token": a.fact_token, "rome_layer": a.rome_layer,
                        "stats_from": a.stats_from, "heldout_locality": a.heldout_locality,
                        "memit_layers": a.memit_layers, "lambda": lam, "d_ff": d_ff,
                        "alpha_threshold": a.alpha_threshold or "record", "alpha_l2": a.alpha_l2 or "record",
                        "target": {"v_steps": tp.v_num_grad_steps, "v_lr": tp.v_lr,
                                   "rome_clamp": tp.clamp_norm_factor,
                                   "z_steps": tpm.v_num_grad_steps, "z_lr": tpm.v_lr,
                                   "z_clamp": tpm.clamp_norm_factor},
                        "wise": {"layer": a.wise_layer, "n_iter": a.wise_iters, "lr": a.wise_lr,
                                 "norm_constraint": a.wise_nc, "act_margin": a.wise_margin,
                                 "save_freq": a.wise_save, "merge_freq": a.wise_merge,
                                 "retrieve": a.wise_retrieve},
                        "machine": f"{platform.machine()} {platform.processor()}, "
                                   f"{jax.device_count()} {jax.devices()[0].platform} device(s)"}}
  results["unedited"] = score(lm.params, edits[:a.batch])

  grace_module = Llama(lm.config, dot=grace.dot)
  wise_module = Llama(lm.config, dot=wise.dot)
  mod_of = lambda name: {"grace": grace_module, "wise": wise_module}.get(name, lm.module)
  wise_hp = method_params(a, "wise", dict(
      n_iter=a.wise_iters, edit_lr=a.wise_lr, norm_constraint=a.wise_nc,
      act_margin=tuple(float(x) for x in a.wise_margin.split(",")), save_freq=a.wise_save,
      merge_freq=a.wise_merge or 2 * a.wise_save, in_scope=a.wise_in_scope,
      retrieve=a.wise_retrieve, act_ratio=a.wise_act_ratio,
      mask_ratio=a.wise_mask_ratio))
  grace_hp = method_params(a, "grace", {})
  wise_tpl = tuple(tpl[:a.wise_templates])
  ft_steps, ft_lr, ft_nc = a.ft_tuned.split(",")
  ft_hp = {"ft": method_params(a, "ft", {}),
           "ft_tuned": method_params(a, "ft", dict(num_steps=int(ft_steps), lr=float(ft_lr),
                                                   norm_constraint=float(ft_nc)))}
  memit_hp = method_params(a, "memit", {"target": dataclasses.asdict(tpm), **(
      {} if lam == "record" else {"lambda_mode": "absolute", "mom2_update_weight": lam})})
  alpha_abs = {}
  if a.alpha_threshold is not None:
    alpha_abs.update(nullspace_mode="absolute", nullspace_threshold=a.alpha_threshold)
  if a.alpha_l2 is not None:
    alpha_abs.update(l2_mode="absolute", L2=a.alpha_l2)
  alpha_hp = method_params(a, "alphaedit", {"target": dataclasses.asdict(tpm), **alpha_abs})
  results["_setup"].update(wise_hp=dataclasses.asdict(wise_hp), wise_templates=len(wise_tpl),
                           grace_layer=a.grace_layer, ft_layer=a.ft_layer,
                           ft={k: dataclasses.asdict(v) for k, v in ft_hp.items()},
                           method_params={"memit": dataclasses.asdict(memit_hp),
                                          "alphaedit": dataclasses.asdict(alpha_hp),
                                          "grace": dataclasses.asdict(grace_hp)})
  loc_pool = [(f.subject, facts.sentence(fs.relations[f.relation][0], f.subject))
              for f in fs.facts]

  def loc_prompt(i, subject):  # an irrelevant prompt (another subject's fact), as WISE's loc
    j = (i * 7919) % len(loc_pool)
    while loc_pool[j][0] == subject:
      j = (j + 1) % len(loc_pool)
    return loc_pool[j][1]

  def batch_edit(name, params, rq, state=None):
    if name == "grace":
      state = state or 0
      if state == 0:  # room for every edit: no codebook growth (and recompile) on the way
        params = grace.wrap_params(params, a.grace_layer,
                                   capacity=max(64, a.seq_edits, a.batch))
      new = grace.edit_many(grace_module, params, lm.tokenizer, rq, layer=a.grace_layer,
                            first_id=state, hp=grace_hp)
      return (new, None), state + len(rq)
    if name == "wise":
      st = state or wise.WiseState()
      if st.count == 0:
        params = wise.wrap_params(params, a.wise_layer)
      for r in rq:
        params, st, _ = wise.wise_edit(wise_module, params, lm.tokenizer, r, layer=a.wise_layer,
                                       loc_prompt=loc_prompt(st.count, r.subject), state=st,
                                       templates=wise_tpl, hp=wise_hp)
      params, st = wise.finalize(params, a.wise_layer, st, wise_hp)
      return (params, None), st
    if name == "memit":
      return methods.memit(lm.module, params, lm.tokenizer, rq, cov=cov, where=memit_where,
                           templates=groups, hp=memit_hp), state
    if name == "alphaedit":
      hp = alpha_hp
      state = state or methods.alpha_state({l: cov[l] for l in methods.edited_layers(
          lm.params, memit_where)}, hp)
      new, d, state = methods.alphaedit(lm.module, params, lm.tokenizer, rq, state=state,
                                        where=memit_where, templates=groups, hp=hp)
      return (new, d), state
    return ft.finetune(lm.module, params, lm.tokenizer, rq, hp=ft_hp[name],
                       where=f"layers_{a.ft_layer}/mlp/down_proj/kernel"), state

  if "rome" in meths and not a.seq_only:
    results["rome"] = rome_singles(lm, edits, reqs, score, cov, tpl, tp, a.n_rome,
                                   f"layers_{a.rome_layer}/mlp/down_proj/kernel")
  for name in [m for m in meths if m != "rome"]:
    if not a.seq_only:
      t0 = time.perf_counter()
      (new, _), _ = batch_edit(name, lm.params, reqs[:a.batch])
      jax.block_until_ready(new)
      dt = time.perf_counter() - t0
      results[name] = score(new, edits[:a.batch], mod_of(name))
      results[name].update(setting=f"one batch of {min(a.batch, len(reqs))}",
                           seconds_per_batch=dt)
      print(name, results[name], flush=True)
    if a.seq_edits:
      results[f"{name}_seq"] = run_sequential(name, batch_edit, score, lm.params, reqs, edits,
                                              mod_of(name), a.seq_edits, a.seq_batch)
      # this run's own setup, so that a combined file (--combine) keeps each method's
      results[f"{name}_seq"]["setup"] = {k: v for k, v in results["_setup"].items()
                                          if k not in ("wise_hp", "ft")}
  if a.seq_only:
    results = {k: v for k, v in results.items() if k == "_setup" or k.endswith("_seq")
               or k == "unedited"}
    pathlib.Path(a.seq_out).parent.mkdir(parents=True, exist_ok=True)
    pathlib.Path(a.seq_out).write_text(json.dumps(results, indent=1))
    write_seq_md(results, pathlib.Path(a.seq_md))
    print(f"wrote {a.seq_out} and {a.seq_md}")
    return 0
  pathlib.Path(a.out).parent.mkdir(parents=True, exist_ok=True)
  pathlib.Path(a.out).write_text(json.dumps(results, indent=1))
  write_md(results, pathlib.Path(a.md))
  print(f"wrote {a.out} and {a.md}")


def run_sequential(name, batch_edit, score, params, reqs, edits, module, n_edits, batch):
  """``n_edits`` sequential edits in batches of ``batch`` (each batch edits the params the
  previous one left); after every batch, the scores on every edit so far (``curve``) with the
  cumulative editing time (scoring excluded)."""
  state, curve, t_edit = None, [], 0.0
  n = min(n_edits, len(reqs))
  if n < n_edits:
    print(f"  {name}: only {n} edits available (asked {n_edits})", flush=True)
  for s in range(0, n, batch):
    t0 = time.perf_counter()
    (params, _), state = batch_edit(name, params, reqs[s:min(s + batch, n)], state)
    jax.block_until_ready(params)
    dt = time.perf_counter() - t0
    t_edit += dt
    sc = score(params, edits[:min(s + batch, n)], module)
    sc.update(n_edits=min(s + batch, n), batch_seconds=dt, seconds=t_edit)
    curve.append(sc)
    print(f"  {name} sequential {sc['n_edits']}: " + ", ".join(
        f"{k} {v:.3f}" for k, v in sc.items() if k != "n_edits"), flush=True)
  return dict(curve[-1], setting=f"{n} sequential edits in batches of {batch}",
              seconds_total=t_edit, curve=curve)


def combine_seq(files, out, md):
  """Merges the ``*_seq`` entries of separate runs (same LM) into one JSON and table."""
  merged = {}
  for f in files:
    r = json.loads(pathlib.Path(f).read_text())
    merged.setdefault("_setup", r["_setup"])
    merged.setdefault("unedited", r.get("unedited"))
    # each method keeps the setup of the run that made it (not the first file's)
    merged.update({k: {**v, "setup": v.get("setup", r["_setup"])} for k, v in r.items()
                   if k.endswith("_seq")})
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(merged, indent=1))
  write_seq_md(merged, md)
  print(f"wrote {out} and {md}")
  return 0


def write_seq_md(results, path):
  """The sequential table: final scores and the per-batch curve of each method."""
  s = results["_setup"]
  lines = ["# Sequential knowledge editing on the facts LM (benchmarks/edit_facts.py --seq-only)",
           "", f"Machine: {s['machine']} (CPU shared with other jobs); facts LM: {s['facts']} "
           f"facts, recall {s['recall']:.3f}, {s['edits_available']} edits available.", "",
           "| method | setting | efficacy | generalization | locality | locality (argmax) | "
           "edit time |", "|---|---|---|---|---|---|---|"]
  for k, r in results.items():
    if k.startswith("_") or not r or "curve" not in r:
      continue
    st = r.get("setup", s)
    extra = {"memit": f", lambda {st.get('lambda')}",
             "alphaedit": f", threshold {st.get('alpha_threshold')}, L2 {st.get('alpha_l2')}"
             }.get(k[:-4], "")
    lines.append(f"| {k[:-4]} | {r['setting']}{extra} | {r['efficacy']:.3f} | "
                 f"{r['generalization']:.3f} | {r['locality']:.3f} | {r['locality_argmax']:.3f} "
                 f"| {r['seconds_total']:.1f} s |")
  lines += ["", "Per batch (efficacy / generalization / locality after n sequential edits, "
            "cumulative edit time):", ""]
  for k, r in results.items():
    if k.startswith("_") or not r or "curve" not in r:
      continue
    lines.append(f"* {k[:-4]}: " + "; ".join(
        f"{c['n_edits']}: {c['efficacy']:.2f}/{c['generalization']:.2f}/{c['locality']:.2f} "
        f"({c['seconds']:.0f} s)" for c in r["curve"]))
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")


def write_md(results, path):
  s = results["_setup"]
  lines = ["# Knowledge editing on the facts LM (benchmarks/edit_facts.py)", "",
           f"Machine: {s['machine']} (CPU shared with other jobs); facts LM: {s['facts']} facts, "
           f"recall {s['recall']:.3f}; key statistics: {s['stats_tokens']} tokens in "
           f"{s['stats_seconds']:.1f} s ({s['stats_seconds_per_million_tokens']:.0f} s per "
           f"million tokens); fact_token={s['fact_token']}, ROME layer {s['rome_layer']}, "
           f"MEMIT/AlphaEdit layers {s['memit_layers']}, lambda {s['lambda']}, key statistics from "
           f"{s.get('stats_from', 'all')} facts; AlphaEdit threshold {s.get('alpha_threshold')}, L2 "
           f"{s.get('alpha_l2')}; target optimisation {s.get('target')}.", "",
           "| method | setting | efficacy | generalization | locality | locality (argmax) | "
           "margin edit | margin para | time |", "|---|---|---|---|---|---|---|---|---|"]
  for k, r in results.items():
    if k.startswith("_"):
      continue
    t = r.get("seconds_per_edit") or r.get("seconds_per_batch") or r.get("seconds_total")
    lines.append(f"| {k} | {r.get('setting', '-')} | {r['efficacy']:.3f} | "
                 f"{r['generalization']:.3f} | {r['locality']:.3f} | {r['locality_argmax']:.3f} | "
                 f"{r['margin_efficacy']:.2f} | {r['margin_generalization']:.2f} | "
                 + (f"{t:.1f} s" if t else "-") + " |")
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  sys.exit(main())
