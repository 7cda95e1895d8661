"""Demo step: all-MiniLM-L6-v2 pruned by weight magnitude at rising sparsity, and 2:4.

Every encoder Linear kernel is pruned (``jp.prune.prune_tree``, method ``magnitude``; data-free)
at 10-70% unstructured sparsity and with the 2:4 pattern; each pruned model embeds the same
evaluation sentences as the quantization step and the cosine to the full-precision embedding is
printed (the report folder plots it against the sparsity).

Example:
  >>> from rich.console import Console
  >>> out = run(Console(quiet=True))  # doctest: +SKIP
  >>> out['sweep'][0]['mean_cosine'] > out['sweep'][-1]['mean_cosine']  # doctest: +SKIP
  True
"""

from __future__ import annotations

from typing import Any

__all__ = ["run", "SPARSITIES"]

SPARSITIES = (0.1, 0.3, 0.5, 0.7)


def run(console: Any, status: Any = None) -> dict[str, Any]:
  """Prunes MiniLM at :data:`SPARSITIES` and 2:4; prints and returns the cosines."""
  # pylint: disable=g-import-not-at-top
  from rich.table import Table
  from jaxparams import prune
  from jaxparams.calib import corpus
  from jaxparams.demo.quant_minilm import N_EVAL, embed_cosines
  from jaxparams.models.minilm import load_minilm
  model = load_minilm()
  evals = corpus.reference_sentences(N_EVAL)
  ref, _ = embed_cosines(model, model[1], evals)
  where = "re:layers_\\d+/.*/kernel"
  t = Table(title=f"all-MiniLM-L6-v2, encoder Linear kernels pruned by magnitude: cosine to "
            f"full precision over {len(evals)} sentences")
  for c in ("pruning", "achieved sparsity", "mean cos", "min cos"):
    t.add_column(c, justify="left" if c == "pruning" else "right")
  out: dict[str, Any] = {"sweep": []}
  settings = [(f"{int(100 * s)}%", {"sparsity": s}) for s in SPARSITIES]
  settings.append(("2:4", {"pattern": "2:4"}))
  for name, fields in settings:
    if status is not None:
      status.update(f"pruning MiniLM: magnitude {name}")
    pruned, achieved = prune.prune_tree(model[1], "magnitude", where=where, **fields)
    _, cos = embed_cosines(model, pruned, evals, ref)
    sp = float(sum(float(v) for v in achieved.values()) / len(achieved))
    out["sweep"].append({"setting": name, "sparsity": sp, "mean_cosine": float(cos.mean()),
                         "min_cosine": float(cos.min()), "pattern": "pattern" in fields})
    t.add_row(name, f"{sp:.2f}", f"{cos.mean():.4f}", f"{cos.min():.4f}")
  console.print(t)
  console.print("Zeroing the smallest weights costs little up to about half of them and then "
                "quickly more; 2:4 (two of every four inputs zero, the pattern sparse tensor "
                "cores run) costs more than 50% unstructured, since it cannot choose where the "
                "zeros go.")
  return out
