"""Demo step 1: the packaged all-MiniLM-L6-v2 in Flax, summarised and round-tripped."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from jaxparams import io as jio
from jaxparams import models
from jaxparams import tree as jtree

SENTENCES = (
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
)


def similarity_table(sentences, emb: np.ndarray) -> Table:
  """A rich table of cosine similarities between sentence embeddings."""
  sim = emb @ emb.T
  t = Table(title="cosine similarity of sentence embeddings")
  t.add_column("")
  for i in range(len(sentences)):
    t.add_column(f"s{i}", justify="right")
  for i, s in enumerate(sentences):
    t.add_row(f"s{i} {s[:34]}", *[f"{v:.2f}" for v in sim[i]])
  return t


def run(console: Console) -> dict:
  """Loads MiniLM, prints its summary and similarities, checks exact round trips."""
  folder = models.minilm_path()
  with jio.open_checkpoint(folder) as ck:
    console.print(f"checkpoint [bold]{folder}[/]: {len(ck)} tensors, "
                  f"{jtree.human_bytes(ck.nbytes)} (read from headers alone)")
  model = models.load_minilm()
  module, params, config, _ = model
  s = jtree.summary(params)
  by_block: dict[str, list] = {}
  for r in s.rows:
    by_block.setdefault(r.path.split("/")[0], []).append(r)
  t = Table(title=f"Flax params: {len(s.rows)} leaves, {s.params:,} parameters, "
            f"{jtree.human_bytes(s.bytes)}")
  for c in ("block", "leaves", "params", "mean |std| of kernels", "max |w|"):
    t.add_column(c, justify="right" if c != "block" else "left")
  for block, rows in by_block.items():
    kernels = [r.std for r in rows if r.path.endswith("kernel")]
    t.add_row(block, str(len(rows)), f"{sum(r.params for r in rows):,}",
              f"{np.mean(kernels):.4f}" if kernels else "-",
              f"{max(r.absmax for r in rows):.3f}")
  console.print(t)

  emb = models.embed(list(SENTENCES), model=model)
  console.print(similarity_table(SENTENCES, emb))

  with tempfile.TemporaryDirectory() as tmp:
    models.to_hf(params, config, Path(tmp) / "hf", copy_from=folder)
    _, back, _ = models.from_hf(Path(tmp) / "hf")
    jio.save_orbax(params, Path(tmp) / "orbax")
    restored = jio.restore_orbax(Path(tmp) / "orbax", like=params)
  exact_st = not jtree.diff(params, back)
  exact_ob = not jtree.diff(params, restored)
  emb2 = models.embed(list(SENTENCES), model=(module, back, config, model[3]))
  console.print(f"safetensors round trip exact: [bold]{exact_st}[/]; orbax round trip exact: "
                f"[bold]{exact_ob}[/]; embeddings after reload max |diff| = "
                f"{float(np.abs(emb2 - emb).max()):.1e}")
  if not (exact_st and exact_ob):
    raise ValueError("round trip was not exact: " + str(jtree.diff(params, back)[:3]))
  return {"params": s.params, "exact_safetensors": exact_st, "exact_orbax": exact_ob}
