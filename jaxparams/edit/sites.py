"""Where locate-then-edit edits, per architecture: the bottom table of :mod:`jaxparams.edit`.

An :class:`Arch` names the edited "value matrix" of a layer (Llama: ``layers_{l}/mlp/down_proj/
kernel``; BERT masked LM: ``layers_{l}/mlp/output/kernel``) and whether targets are predicted at
``[MASK]`` tokens. It imports nothing of :mod:`jaxparams.edit`: the probe, the statistics, the
encoders and the methods build on it (:mod:`jaxparams.edit.arch` documents both architectures).

Example:
  >>> kernel_path(3, BERT), layer_of_path('layers_3/mlp/output/kernel')
  ('layers_3/mlp/output/kernel', 3)
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

from flax import linen as nn

__all__ = ["Arch", "LLAMA", "BERT", "ARCHS", "of", "kernel_path", "bias_path", "layer_of_path",
           "MASK", "CLS", "SEP", "UNK", "PAD", "LAYER_RE"]

MASK, CLS, SEP, UNK, PAD = "[MASK]", "[CLS]", "[SEP]", "[UNK]", "[PAD]"


@dataclasses.dataclass(frozen=True)
class Arch:
  """One architecture's edit sites.

  Attributes:
    name: ``'llama'`` or ``'bert'``.
    kernel: Path of layer ``{}``'s edited kernel.
    masked: Targets are predicted at ``[MASK]`` tokens (masked LM) instead of as next tokens.
  """
  name: str
  kernel: str
  masked: bool


LLAMA = Arch("llama", "layers_{}/mlp/down_proj/kernel", False)
BERT = Arch("bert", "layers_{}/mlp/output/kernel", True)
ARCHS = {a.name: a for a in (LLAMA, BERT)}
LAYER_RE = re.compile(r"layers_(\d+)/mlp/(down_proj|output)/kernel")


def of(like: Any) -> Arch:
  """The :class:`Arch` of a module (``Bert`` -> BERT, else Llama) or of a params tree (by the
  name of layer 0's FFN output: ``output`` -> BERT, else Llama)."""
  if isinstance(like, nn.Module):
    from jaxparams.models.bert import Bert  # pylint: disable=g-import-not-at-top
    return BERT if isinstance(like, Bert) else LLAMA
  if isinstance(like, dict):
    lay = next((v for k, v in like.items() if re.fullmatch(r"layers_\d+", str(k))), None)
    if isinstance(lay, dict) and isinstance(lay.get("mlp"), dict) and "output" in lay["mlp"]:
      return BERT
  return LLAMA


def kernel_path(layer: int, arch: Arch | Any = None) -> str:
  """Path of layer ``layer``'s edited kernel (``arch``: an :class:`Arch`, module or params;
  None = Llama)."""
  a = arch if isinstance(arch, Arch) else (LLAMA if arch is None else of(arch))
  return a.kernel.format(layer)


def bias_path(layer: int, arch: Arch | Any = None) -> str:
  """Path of the edited layer's bias (BERT's output dense has one; a Llama with ``mlp_bias``)."""
  return kernel_path(layer, arch)[:-len("kernel")] + "bias"


def layer_of_path(path: str) -> int:
  """Layer index of an edited-kernel path (either architecture); ValueError for any other leaf."""
  m = LAYER_RE.fullmatch(path)
  if not m:
    raise ValueError(f"leaf {path!r} is not an MLP output projection kernel (expected "
                     f"{LLAMA.kernel.format('N')} or {BERT.kernel.format('N')})")
  return int(m.group(1))
