"""Refusal of pickle-based checkpoints: jaxparams never unpickles."""

from __future__ import annotations

from pathlib import Path

__all__ = ["PICKLE_SUFFIXES", "refuse_pickle"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


def refuse_pickle(path: str | Path) -> None:
  """Raises ``ValueError`` if ``path`` is (or a folder holds only) pickle checkpoints.

  Example:
    >>> refuse_pickle('model.safetensors')  # fine: returns None
  """
  path = Path(path)
  offenders = []
  if path.is_dir():
    if not any(path.glob("*.safetensors")):
      offenders = sorted(p.name for p in path.iterdir() if p.suffix in PICKLE_SUFFIXES)
  elif path.suffix in PICKLE_SUFFIXES:
    offenders = [path.name]
  if offenders:
    raise ValueError(
        f"{path}: refusing pickle checkpoint {offenders[:3]}: unpickling can run arbitrary code, "
        "so jaxparams never loads .bin/.pt/.pth/.ckpt files. Convert it to safetensors outside "
        "jaxparams, e.g. with transformers: AutoModel.from_pretrained(src).save_pretrained(dst, "
        "safe_serialization=True).")
