"""Demo step: a tiny facts LM trained in seconds, one fact edited with ROME, then rolled back.

Trains the facts LM (``jaxparams.edit.facts_lm``, size ``tiny``) on 4 invented people x 6
relations, computes the key statistics from the facts corpus, edits one fact with ROME and
prints the probabilities of the old and new object before and after the edit, on the edit
prompt and on a paraphrase, then checks that the rollback restores the params bit-exactly.

Example:
  >>> from rich.console import Console
  >>> out = run(Console(quiet=True))  # doctest: +SKIP
  >>> out['rollback_exact']  # doctest: +SKIP
  True
"""

from __future__ import annotations

import json
import pathlib
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["run"]


def run(console: Any) -> dict[str, Any]:
  # pylint: disable=g-import-not-at-top
  from rich.table import Table
  from jaxparams.edit import delta as delta_lib
  from jaxparams.edit import evaluate, facts, facts_lm, methods, stats, targets
  from jaxparams.train.facts_lm import train_facts_lm
  from jaxparams.edit import requests as req_lib
  fs = facts.load_facts_set()
  subjects = sorted({f.subject for f in fs.facts})[:4]
  rows = [f for f in fs.facts if f.subject in subjects]
  with tempfile.TemporaryDirectory() as tmp:
    d = pathlib.Path(tmp)
    (d / "facts.jsonl").write_text("".join(json.dumps(f.__dict__) + "\n" for f in rows))
    (d / "relations.json").write_text(json.dumps({r: {"prompts": list(p)}
                                                  for r, p in fs.relations.items()}))
    target = next(f.object for f in fs.facts if f.relation == rows[0].relation
                  and f.object != rows[0].object)
    (d / "edits.jsonl").write_text(json.dumps({"subject": rows[0].subject,
                                               "relation": rows[0].relation,
                                               "target_new": target}) + "\n")
    lm = train_facts_lm(d / "lm", d / "facts.jsonl", d / "relations.json",
                                 d / "edits.jsonl", size="tiny", steps=500)
    rec = facts_lm.recall(lm)["accuracy"]
    console.print(f"facts LM: {len(rows)} facts, recall {rec:.2f} after 500 steps")
    texts = [facts.sentence(p, f.subject, f.object) for f in rows
             for p in fs.relations[f.relation]]
    st = stats.key_stats(lm.module, lm.params, stats.text_batches(lm.tokenizer, texts),
                         layers=(0,))
    cov = st[0].gram + 1e-2 * jnp.eye(st[0].xtx.shape[0])
    req = req_lib.requests_from_edits(lm.facts)[0]
    hp = methods.RomeParams(target=targets.TargetParams(fact_token="last"))
    tpl = req_lib.context_templates(lm.module, lm.params, lm.tokenizer,
                                    length_params=((5, 4),))
    new, d_ = methods.rome(lm.module, lm.params, lm.tokenizer, req, cov=cov,
                           where="layers_0/mlp/down_proj/kernel", templates=tpl, hp=hp)
    old = rows[0].object
    prompts = [facts.sentence(p, req.subject) for p in fs.relations[rows[0].relation][:2]]
    table = Table("prompt", "params", f"P({old})", f"P({target})")
    out = {"recall": rec}
    for name, p in (("before", lm.params), ("after", new)):
      for pr in prompts:
        lp = evaluate.target_logprobs(lm.module, p, lm.tokenizer, [pr, pr], [old, target])
        pr_old, pr_new = (float(x) for x in np.exp(np.asarray(lp)))
        table.add_row(pr, name, f"{pr_old:.3f}", f"{pr_new:.3f}")
        out[f"{name}:{pr}"] = (pr_old, pr_new)
    console.print(table)
    back = delta_lib.rollback(new, d_)
    exact = all(bool(jnp.array_equal(a, b)) for a, b in
                zip(jax.tree.leaves(back), jax.tree.leaves(lm.params)))
    console.print(f"ROME delta: rank one on layers_0/mlp/down_proj; rollback bit-exact: {exact}")
    out["rollback_exact"] = exact
  return out
