"""Training metrics: append-only JSONL records and a loss plot.

Records are dicts with an ``"event"`` key: ``"train"`` (step, loss, lr, grad_norm, tokens,
tokens_per_s), ``"eval"`` (step, eval_loss), ``"growth"`` (step, loss_before, loss_after, ...),
``"resume"`` (step). Only process 0 writes.

Example:
  >>> import tempfile, pathlib
  >>> d = pathlib.Path(tempfile.mkdtemp())
  >>> w = MetricsWriter(d / 'metrics.jsonl')
  >>> w.write({'event': 'train', 'step': 1, 'loss': 2.0})
  >>> read_jsonl(d / 'metrics.jsonl')
  [{'event': 'train', 'step': 1, 'loss': 2.0}]
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

__all__ = ["MetricsWriter", "read_jsonl", "plot_metrics"]


def read_jsonl(path: str | pathlib.Path) -> list[dict[str, Any]]:
  """Reads all records of a JSONL file (missing file -> empty list)."""
  path = pathlib.Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsWriter:
  """Appends JSON records to a file, one per line.

  Args:
    path: The ``.jsonl`` file.
    enabled: False on processes other than 0 (then nothing is written).
    truncate_after_step: When resuming, drop existing records with ``step`` greater than this
      (they belong to the interrupted run's unsaved tail and will be recomputed).
  """

  def __init__(self, path: str | pathlib.Path, *, enabled: bool = True,
               truncate_after_step: int | None = None):
    self.path = pathlib.Path(path)
    self.enabled = enabled
    if enabled:
      self.path.parent.mkdir(parents=True, exist_ok=True)
      if truncate_after_step is not None and self.path.exists():
        kept = [r for r in read_jsonl(self.path) if r.get("step", 0) <= truncate_after_step
                and not (r.get("step") == truncate_after_step and r.get("event") == "growth")]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))

  def write(self, record: dict[str, Any]) -> None:
    if not self.enabled:
      return
    with self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")


def plot_metrics(records: list[dict[str, Any]], out_png: str | pathlib.Path,
                 title: str = "") -> pathlib.Path:
  """Plots train/eval loss against tokens seen, with growth steps as vertical lines.

  Returns:
    The path of the written PNG.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  out_png = pathlib.Path(out_png)
  train = [r for r in records if r.get("event") == "train"]
  evals = [r for r in records if r.get("event") == "eval"]
  growth = [r for r in records if r.get("event") == "growth"]
  tokens_at = {r["step"]: r["tokens"] for r in train}
  fig, ax = plt.subplots(figsize=(7, 4))
  if train:
    ax.plot([r["tokens"] for r in train], [r["loss"] for r in train], lw=1, label="train loss")
  if evals:
    ax.plot([tokens_at.get(r["step"], 0) for r in evals], [r["eval_loss"] for r in evals], "o-",
            ms=3, label="eval loss")
  for g in growth:
    ax.axvline(tokens_at.get(g["step"], 0), color="k", ls="--", lw=0.8)
    ax.text(tokens_at.get(g["step"], 0), 0.03, f" grow ({g['hook']})", fontsize=7, rotation=90,
            va="bottom", ha="right", transform=ax.get_xaxis_transform())
  ax.set_xlabel("tokens")
  ax.set_ylabel("loss (nats / byte)")
  ax.set_title(title)
  ax.legend()
  fig.tight_layout()
  fig.savefig(out_png, dpi=100)
  plt.close(fig)
  return out_png
