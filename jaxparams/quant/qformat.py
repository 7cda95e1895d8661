"""Names shared by the quantized checkpoint formats (jaxparams layout and HF GPTQ layout).

Example:
  >>> LAYOUT_FILE, GPTQ_CONFIG_FILE
  ('jaxparams_quant.json', 'quantize_config.json')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jaxparams.quant.qarray import QArray

__all__ = ["LAYOUT_FILE", "GPTQ_CONFIG_FILE", "is_quant", "config_quant"]

LAYOUT_FILE = "jaxparams_quant.json"
GPTQ_CONFIG_FILE = "quantize_config.json"


def is_quant(x: Any) -> bool:
  """A QArray, or an AWQ result (``qarray`` + ``input_scale``)."""
  return isinstance(x, QArray) or (isinstance(getattr(x, "qarray", None), QArray)
                                   and hasattr(x, "input_scale"))


def config_quant(folder: Path) -> dict | None:
  """The ``quantization_config`` of ``folder/config.json`` when it is GPTQ, else None."""
  cfg = folder / "config.json"
  if cfg.is_file():
    from jaxparams.io import read_model_config  # pylint: disable=g-import-not-at-top
    try:
      q = read_model_config(folder).get("quantization_config")
    except ValueError:
      return None
    if isinstance(q, dict) and q.get("quant_method") == "gptq":
      return q
  return None
