"""What a jaxparams-layout folder tells other tools: a refusing ``quantization_config`` and a card.

A folder in the jaxparams quantized layout keeps the source ``config.json`` (so it stays
recognisable) but its weights are ``<name>.qcodes/.qscale/...``, which no plain loader
knows. Transformers would fill the missing weights randomly and load garbage, so the
``config.json`` gets a ``quantization_config`` that transformers refuses:

* it has **no** ``quant_method``: transformers (``AutoHfQuantizer.supports_quant_method``)
  raises ``ValueError`` ("has no `quant_method` attribute") for that. An unknown
  ``quant_method`` (``"jaxparams"``) would not do: transformers only warns, skips the
  quantization and loads random weights;
* it says what the folder is (``format``, ``version``) and how to read it (``how_to_load``).

:func:`model_card` is the folder's ``README.md`` (not the source's card copied).

Example:
  >>> q = quantization_config()
  >>> 'quant_method' in q, q['format']
  (False, 'jaxparams.quant')
  >>> 'jaxparams dequantize' in model_card('llama_tiny', {'rtn': 14})
  True
"""

from __future__ import annotations

from typing import Any, Mapping

__all__ = ["quantization_config", "model_card", "CARD_TAG"]

CARD_TAG = "jaxparams-quantized"
_FORMAT = "jaxparams.quant"
_HOW = ("jaxparams quantized layout: transformers and sentence-transformers refuse it on purpose "
        "(\"has no `quant_method` attribute\"); run `jaxparams dequantize QDIR OUT_DIR` for a "
        "plain checkpoint they load, or read it with jaxparams.quant.load_quantized(QDIR); "
        "`jaxparams quantize --format gptq` writes the HF GPTQ layout instead")


def quantization_config(version: int = 1) -> dict[str, Any]:
  """The ``config.json`` ``quantization_config`` of a jaxparams-layout folder (no ``quant_method``)."""
  return {"format": _FORMAT, "version": int(version), "layout_file": "jaxparams_quant.json",
          "how_to_load": _HOW}


def is_jaxparams_card(text: str) -> bool:
  """Whether a README.md is a card written by :func:`model_card`."""
  return f"- {CARD_TAG}" in text.split("---", 2)[1] if text.startswith("---") else False


def model_card(source: str, methods: Mapping[str, int], *, bits: Mapping[str, Any] | None = None
               ) -> str:
  """The ``README.md`` of a jaxparams-layout folder.

  Args:
    source: the source checkpoint (folder name or id).
    methods: ``{method: number of tensors}`` quantized.
    bits: optional ``{method: bits}`` for the table.
  """
  rows = "\n".join(f"| {m} | {n} | {(bits or {}).get(m, '')} |" for m, n in sorted(methods.items()))
  return f"""---
tags:
- {CARD_TAG}
base_model: {source}
---
# {source}, quantized with jaxparams

This folder holds **{source}** with its Linear weights quantized by
jaxparams, in the *jaxparams quantized layout*
(`jaxparams_quant.json` lists each quantized tensor, stored as `<name>.qcodes`,
`<name>.qscale`, `<name>.qzero`, ...). Other tensors are kept in full precision.

**Transformers and sentence-transformers cannot load this folder** (its `config.json`
has a `quantization_config` without `quant_method`, which they refuse instead of loading
random weights). To use it:

```bash
jaxparams dequantize QDIR OUT_DIR   # a plain full-precision HF checkpoint
```

or, in Python, `jaxparams.quant.load_quantized(folder)` (QArray leaves) and
`jaxparams.quant.dequantize_checkpoint(folder, out)`.

| method | tensors | bits |
|---|---|---|
{rows}

`quant_report.json` has the per-tensor errors.
"""
