"""Names read from a model folder (index shards, side files) must stay inside that folder."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

__all__ = ["allowed_roots", "resolve_inside"]


def allowed_roots(folder: str | Path) -> list[Path]:
  """Where files of ``folder`` may really live: the folder itself, and for a
  Hugging Face cache snapshot (``.../snapshots/<rev>/``, whose files are symlinks
  into ``../../blobs/``) that cache entry's ``blobs`` folder.

  Example:
    >>> [p.name for p in allowed_roots('/cache/models--a--b/snapshots/abc')][-1]
    'blobs'
  """
  real = Path(folder).resolve()
  roots = [real]
  if real.parent.name == "snapshots":
    roots.append(real.parent.parent / "blobs")
  return roots


def resolve_inside(folder: str | Path, name: object, *, where: str, what: str = "file") -> Path:
  """``folder / name``, refusing names that lead outside ``folder``.

  Refused: non-strings, empty names, absolute paths, ``..`` components, NUL
  bytes, and symlinks whose target is outside :func:`allowed_roots`.

  Args:
    folder: the model folder.
    name: a relative name, e.g. a shard from ``model.safetensors.index.json``.
    where: the file that named it, for messages.
    what: what the name is (``'shard'``), for messages.

  Raises:
    ValueError: the name leads outside the folder (the name is shown, not file contents).

  Example:
    >>> resolve_inside('/m', 'model-00001-of-00002.safetensors', where='index').name
    'model-00001-of-00002.safetensors'
    >>> resolve_inside('/m', '../secret.safetensors', where='index', what='shard')
    Traceback (most recent call last):
    ...
    ValueError: index: shard name '../secret.safetensors' leads outside the model folder /m ...
  """
  if not isinstance(name, str) or not name or "\x00" in name:
    raise ValueError(f"{where}: {what} name {name!r} is not a valid file name.")
  pure = PurePosixPath(name)
  if pure.is_absolute() or ".." in pure.parts:
    raise ValueError(f"{where}: {what} name {name!r} leads outside the model folder "
                     f"{folder} (absolute paths and '..' are refused).")
  path = Path(folder) / name
  real = path.resolve()
  if not any(real == r or real.is_relative_to(r) for r in allowed_roots(folder)):
    raise ValueError(f"{where}: {what} {name!r} is a symlink to {real}, outside the model "
                     f"folder {folder}; refusing to read it.")
  return path
