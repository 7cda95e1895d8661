"""The report folder of ``jaxparams demo``: one PNG plot per step's numbers (matplotlib, Agg).

:func:`write_report` takes the dicts the steps return (keyed by step: ``merge``, ``quant``,
``prune``, ``edit``) and writes, for each step present:

* ``merge_accuracy.png``: mean accuracy of the base, the experts and each merge method;
* ``quant_cosine_vs_bits.png``: MiniLM embedding cosine to full precision against bits (RTN
  2/3/4/8, GPTQ 4);
* ``prune_cosine_vs_sparsity.png``: the same against magnitude-pruning sparsity (and 2:4);
* ``edit_before_after.png``: P(new target) and P(old answer) before and after the ROME edit.

Example:
  >>> import os, tempfile
  >>> out = write_report({'prune': {'sweep': [{'setting': '50%', 'sparsity': 0.5,
  ...     'mean_cosine': 0.9, 'min_cosine': 0.8, 'pattern': False}]}}, tempfile.mkdtemp())
  >>> [p.name for p in out]
  ['prune_cosine_vs_sparsity.png']
"""

from __future__ import annotations

import pathlib
from typing import Any

__all__ = ["write_report"]


def _merge(ax, r: dict[str, Any]) -> None:
  acc = r["accuracy"]
  names = list(acc)
  vals = [100 * acc[n]["avg"] for n in names]
  colors = ["0.6" if n == "base" else "tab:blue" if n.startswith("expert") else "tab:orange"
            for n in names]
  ax.barh(range(len(names)), vals, color=colors)
  ax.set_yticks(range(len(names)), [n.split(" (")[0] for n in names], fontsize=8)
  ax.invert_yaxis()
  ax.axvline(vals[0], color="0.4", lw=0.8, ls="--")
  ax.set_xlabel("mean accuracy over the three digit tasks (%)")
  ax.set_title("Merging digits experts (grey: base, blue: experts, orange: merges)", fontsize=9)
  for i, v in enumerate(vals):
    ax.text(v + 0.5, i, f"{v:.1f}", va="center", fontsize=7)
  ax.set_xlim(0, 105)


def _quant(ax, r: dict[str, Any]) -> None:
  rtn = [x for x in r["sweep"] if x["method"] == "rtn"]
  ax.plot([x["bits"] for x in rtn], [x["mean_cosine"] for x in rtn], "o-", label="RTN")
  gptq = [x for x in r["sweep"] if x["method"] == "gptq"]
  ax.plot([x["bits"] for x in gptq], [x["mean_cosine"] for x in gptq], "s", color="tab:red",
          label="GPTQ")
  ax.set_xlabel("bits per weight (group 128)")
  ax.set_ylabel("mean cosine to full precision")
  ax.set_xticks(sorted({x["bits"] for x in r["sweep"]}))
  ax.set_title("MiniLM quantized: sentence-embedding cosine vs bits", fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)


def _prune(ax, r: dict[str, Any]) -> None:
  un = [x for x in r["sweep"] if not x["pattern"]]
  ax.plot([100 * x["sparsity"] for x in un], [x["mean_cosine"] for x in un], "o-",
          label="magnitude, unstructured")
  nm = [x for x in r["sweep"] if x["pattern"]]
  ax.plot([100 * x["sparsity"] for x in nm], [x["mean_cosine"] for x in nm], "s",
          color="tab:red", label="magnitude, 2:4")
  ax.set_xlabel("sparsity of the encoder Linear kernels (%)")
  ax.set_ylabel("mean cosine to full precision")
  ax.set_title("MiniLM pruned: sentence-embedding cosine vs sparsity", fontsize=9)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)


def _edit(ax, r: dict[str, Any]) -> None:
  import numpy as np  # pylint: disable=g-import-not-at-top
  rows = r["rows"]
  x = np.arange(len(rows))
  w = 0.2
  new, old = r["edit"]["target_new"], r["old"]
  for k, (key, label, color) in enumerate((
      ("p_new_before", f"P({new}) before", "#9ecae1"), ("p_new_after", f"P({new}) after",
                                                        "tab:blue"),
      ("p_old_before", f"P({old}) before", "#fdae6b"), ("p_old_after", f"P({old}) after",
                                                        "tab:orange"))):
    ax.bar(x + (k - 1.5) * w, [row[key] for row in rows], w, label=label, color=color)
  ax.set_xticks(x, [("prompt: " if row["kind"] == "prompt" else "") + row["text"]
                    .replace(r["edit"]["subject"], "S") for row in rows], fontsize=7,
                rotation=12, ha="right")
  ax.set_ylim(0, 1.3)
  ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
  ax.set_ylabel("probability of the answer")
  ax.set_title(f"ROME edit of S = {r['edit']['subject']}: {old} -> {new}", fontsize=9)
  ax.legend(fontsize=7, ncol=4, loc="upper center", frameon=False)


_PLOTS = (("merge", "merge_accuracy.png", _merge, (6, 3.2)),
          ("quant", "quant_cosine_vs_bits.png", _quant, (5, 3.2)),
          ("prune", "prune_cosine_vs_sparsity.png", _prune, (5, 3.2)),
          ("edit", "edit_before_after.png", _edit, (6.5, 3.4)))


def write_report(results: dict[str, dict[str, Any]], out_dir: str | pathlib.Path
                 ) -> list[pathlib.Path]:
  """Writes one PNG per step present in ``results`` into ``out_dir``; returns their paths."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  out = pathlib.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  written = []
  for key, name, draw, size in _PLOTS:
    if key not in results:
      continue
    fig, ax = plt.subplots(figsize=size, dpi=100)
    try:
      draw(ax, results[key])
      fig.tight_layout()
      fig.savefig(out / name)
    finally:
      plt.close(fig)
    written.append(out / name)
  return written
