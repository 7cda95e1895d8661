"""Demo step: all-MiniLM-L6-v2 quantized to 4 bits with RTN and GPTQ.

Every Linear kernel of the six encoder layers is quantized (embeddings, norms,
biases and the pooler stay full precision); GPTQ is calibrated block by block on
sentences from Python's own docstrings and evaluated on different sentences
(the Python language reference). Prints the size of the weights before/after and
the cosine similarity of each sentence embedding to the full-precision one.

Example:
  >>> from rich.console import Console
  >>> out = run(Console(quiet=True))  # doctest: +SKIP
  >>> out['gptq']['mean_cosine'] > 0.97  # doctest: +SKIP
  True
"""

from __future__ import annotations

import functools
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["run", "embed_cosines", "quantize_minilm"]

N_CALIB = 32
N_EVAL = 64


@functools.partial(jax.jit, static_argnums=0)
def _encode(module, params, ids, mask, types):
  from jaxparams.models.bert import l2_normalize, mean_pool  # pylint: disable=g-import-not-at-top
  hidden = module.apply({"params": params}, ids, mask, types)
  return l2_normalize(mean_pool(hidden.astype(jnp.float32), mask))


def embed_cosines(model: tuple, params: Any, sentences: Sequence[str],
                  reference: np.ndarray | None = None, *, batch_size: int = 64
                  ) -> tuple[np.ndarray, np.ndarray]:
  """``(embeddings, cosine to reference)`` of MiniLM sentence embeddings with ``params``
  (quantized leaves are dequantized inside one compiled function, reused across calls)."""
  # pylint: disable=g-import-not-at-top
  from jaxparams.models.minilm import tokenize
  from jaxparams.quant.rules import effective_weight
  module, _, _, tok = model
  # Dequantize outside the forward pass, so every quantized variant reuses one compilation.
  params = jax.tree.map(lambda x: effective_weight(x) if _is_q(x) else x, params, is_leaf=_is_q)
  out = []
  for i in range(0, len(sentences), batch_size):
    b = tokenize(tok, list(sentences[i:i + batch_size]))
    out.append(np.asarray(_encode(module, params, b["input_ids"], b["attention_mask"],
                                  b["token_type_ids"])))
  e = np.concatenate(out) if out else np.zeros((0, module.config.hidden_size), np.float32)
  if reference is None:
    return e, np.ones(len(e), np.float32)
  return e, np.sum(e * reference, axis=1)


def _is_q(x: Any) -> bool:
  from jaxparams.quant.checkpoint import is_quant  # pylint: disable=g-import-not-at-top
  return is_quant(x)


def quantize_minilm(model: tuple, method: str, fields: dict[str, Any],
                    calib_sentences: Sequence[str] | None = None, *, max_length: int = 48):
  """Quantizes every encoder Linear of MiniLM; returns ``(qparams, report, seconds)``."""
  # pylint: disable=g-import-not-at-top
  from jaxparams.calib import text_batches
  from jaxparams.quant.calibrate import quantize_model
  module, params, _, tok = model
  batches = None
  if calib_sentences is not None:
    batches = text_batches(tok, calib_sentences, batch_size=len(calib_sentences),
                           max_length=max_length)
  t0 = time.perf_counter()
  q, report = quantize_model(module, params, [("**/kernel", (method, fields))], batches)
  return q, report, time.perf_counter() - t0


SWEEP_BITS = (2, 3, 4, 8)


def run(console, status: Any = None) -> dict:
  """Quantizes MiniLM with RTN (2, 3, 4, 8 bits) and GPTQ (4 bits), group 128, and prints size
  and cosine of the 4-bit ones (the sweep goes to the report's cosine-vs-bits plot)."""
  # pylint: disable=g-import-not-at-top
  from rich.table import Table
  from jaxparams.models.minilm import load_minilm
  from jaxparams.calib import corpus
  from jaxparams.tree import human_bytes
  model = load_minilm()
  calib = corpus.docstring_sentences(N_CALIB)
  evals = corpus.reference_sentences(N_EVAL)
  ref, _ = embed_cosines(model, model[1], evals)
  t = Table(title=f"all-MiniLM-L6-v2, 36 Linear kernels, cosine to full precision over "
            f"{len(evals)} sentences (calibration: {len(calib)} other sentences)")
  for c in ("method", "bits", "group", "Linear bytes", "whole model", "mean cos", "min cos",
            "seconds"):
    t.add_column(c, justify="left" if c == "method" else "right")
  out: dict[str, Any] = {"sentences": len(evals), "sweep": []}
  runs = [("rtn", b, False) for b in SWEEP_BITS] + [("gptq", 4, True)]
  for method, bits, use_calib in runs:
    fields = {"bits": bits, "group_size": 128}
    if status is not None:
      status.update(f"quantizing MiniLM: {method} at {bits} bits"
                    + (" (GPTQ: block by block, about a minute)" if method == "gptq" else ""))
    q, report, secs = quantize_minilm(model, method, fields, calib if use_calib else None)
    _, cos = embed_cosines(model, q, evals, ref)
    out["sweep"].append({"method": method, "bits": bits, "mean_cosine": float(cos.mean()),
                         "min_cosine": float(cos.min())})
    if bits != 4:
      continue
    lin_before = sum(e.bytes_before for e in report.quantized())
    lin_after = sum(e.bytes_after for e in report.quantized())
    out[method] = {"bits": 4, "group_size": 128, "linear_bytes_before": lin_before,
                   "linear_bytes_after": lin_after, "model_bytes_before": report.bytes_before,
                   "model_bytes_after": report.bytes_after, "mean_cosine": float(cos.mean()),
                   "min_cosine": float(cos.min()), "seconds": secs,
                   "num_quantized": report.num_quantized}
    t.add_row(method, "4", "128", f"{human_bytes(lin_before)} -> {human_bytes(lin_after)}",
              f"{human_bytes(report.bytes_before)} -> {human_bytes(report.bytes_after)}",
              f"{cos.mean():.4f}", f"{cos.min():.4f}", f"{secs:.1f}")
  console.print(t)
  console.print("RTN cosine by bits: " + ", ".join(
      f"{r['bits']}: {r['mean_cosine']:.4f}" for r in out["sweep"] if r["method"] == "rtn"))
  console.print("A cosine near 1 means the quantized model embeds sentences as the original "
                "does. Embeddings and the word-piece table stay float32, so the whole model shrinks "
                "less than its Linear layers; GPTQ uses the calibration inputs of each layer to "
                "spread the rounding error where the next layers are least sensitive.")
  return out
