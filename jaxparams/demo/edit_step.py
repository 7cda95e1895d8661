"""Demo step: one fact edited with ROME in the shipped small facts LM, then rolled back.

Loads the facts LM of :mod:`jaxparams.demo.facts_example` (a 2-layer Llama that knows the facts of
8 invented people; the same model ``jaxparams demo --example`` writes), computes the key
statistics from the other people's facts, edits one fact with ROME (library defaults: key at the
last token of the subject, layer 0's MLP) and prints the probabilities of the new target and of
the old answer before and after the edit, on the edit prompt and on every paraphrase of the
relation, with the recall of the other facts (locality); then checks that the rollback restores
the params bit-exactly.

Example:
  >>> from rich.console import Console
  >>> out = run(Console(quiet=True))  # doctest: +SKIP
  >>> out['rollback_exact']  # doctest: +SKIP
  True
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["run", "edit_example"]


def edit_example() -> dict[str, Any]:
  """Runs the edit; returns the model, params before/after, the score rows and recalls."""
  # pylint: disable=g-import-not-at-top
  import dataclasses
  from jaxparams.demo import facts_example as fx
  from jaxparams.edit import facts_lm, methods, report, stats
  from jaxparams.edit import requests as req_lib
  lm = facts_lm.load_facts_lm(fx.MODEL_DIR)
  fs = fx.facts_subset()
  lm = dataclasses.replace(lm, facts=fs)
  layer = fx.EDIT_LAYER
  st = stats.key_stats(lm.module, lm.params, stats.text_batches(lm.tokenizer, fx.stats_lines(fs)),
                       layers=(layer,))
  e = fs.edits[0]
  req = req_lib.requests_from_edits(fs)[0]
  tpl = req_lib.context_templates(lm.module, lm.params, lm.tokenizer)
  new, delta = methods.rome(lm.module, lm.params, lm.tokenizer, req, cov={layer: st[layer].gram},
                            where=f"layers_{layer}/mlp/down_proj/kernel", templates=tpl)
  paraphrases = fs.relations[e.relation][1:]
  old = fs.object_of(e.subject, e.relation)
  rows = report.before_after(lm.module, lm.params, new, lm.tokenizer, [req] * len(paraphrases),
                             paraphrases=list(paraphrases), old=[old] * len(paraphrases))
  rows = [rows[0]] + [r for r in rows if r.kind == "paraphrase"]
  others = _others(fs, e)
  recall = {name: facts_lm.recall(dataclasses.replace(lm, facts=others), p)["accuracy"]
            for name, p in (("before", lm.params), ("after", new))}
  return {"lm": lm, "new": new, "delta": delta, "rows": rows, "recall_others": recall,
          "layer": layer, "edit": e, "old": old, "n_others": len(others.facts),
          "target_loss": delta.meta["info"][layer]["loss"]}


def _others(fs, e):
  """The facts set without the edited subject's facts (for the locality recall)."""
  from jaxparams.edit import facts  # pylint: disable=g-import-not-at-top
  return facts.FactsSet(tuple(f for f in fs.facts if f.subject != e.subject), fs.relations, ())


def run(console: Any, status: Any = None) -> dict[str, Any]:
  """Edits, prints the before/after table, checks the rollback; returns the numbers."""
  # pylint: disable=g-import-not-at-top
  from rich.table import Table
  from jaxparams.edit import delta as delta_lib
  if status is not None:
    status.update("editing one fact with ROME (key statistics, target optimisation)")
  r = edit_example()
  e, rows = r["edit"], r["rows"]
  t = Table(title=f"ROME: {e.subject}'s {e.relation} {r['old']} -> {e.target_new} "
            f"(layer {r['layer']} MLP, rank-one update)")
  for c in ("", "prompt", f"P({e.target_new}) before", "after", f"P({r['old']}) before", "after"):
    t.add_column(c, justify="left" if c in ("", "prompt") else "right")
  for row in rows:
    t.add_row(row.kind, row.text, f"{row.p_new_before:.3f}", f"[bold]{row.p_new_after:.3f}[/]",
              f"{row.p_old_before:.3f}", f"{row.p_old_after:.3f}")
  console.print(t)
  rec = r["recall_others"]
  took = [row.p_new_after > row.p_old_after for row in rows]
  console.print(f"The edit took where P({e.target_new}) after the edit exceeds P({r['old']}): "
                f"on the edit prompt: {took[0]}, on {sum(took[1:])} of {len(took) - 1} "
                f"paraphrases (ROME writes the new fact at the last token of the name, from "
                f"the edit prompt and context prefixes only); the other {r['n_others']} facts' "
                f"recall went {rec['before']:.3f} -> {rec['after']:.3f} over all their "
                f"phrasings (locality: 1.0 = untouched).")
  back = delta_lib.rollback(r["new"], r["delta"])
  exact = all(bool(jnp.array_equal(a, b)) for a, b in
              zip(jax.tree.leaves(back), jax.tree.leaves(r["lm"].params)))
  console.print(f"ROME delta: rank one on layers_{r['layer']}/mlp/down_proj; rollback "
                f"bit-exact: {exact}")
  return {"rows": [row.__dict__ for row in rows], "recall_others": rec, "rollback_exact": exact,
          "target_loss": r["target_loss"], "edit": e.__dict__, "old": r["old"]}
