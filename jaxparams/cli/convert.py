"""``jaxparams convert SRC DST``: safetensors <-> orbax, exact.

A safetensors checkpoint becomes a folder ``DST/`` holding ``params/`` (an
orbax checkpoint of the ``{tensor name: array}`` dict) plus ``config.json`` and
tokenizer files; the reverse direction writes HF safetensors with the same
tensor names.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from jaxparams import io as jio
from jaxparams import tree as jtree
from jaxparams.cli.inspect import is_orbax_dir


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("convert", help="Convert a checkpoint between safetensors and orbax.",
                     description="safetensors (file or HF folder) -> orbax folder, or orbax "
                     "folder -> HF safetensors folder. Tensor names and values are kept exactly.")
  p.add_argument("src")
  p.add_argument("dst")
  p.add_argument("--to", choices=("auto", "orbax", "safetensors"), default="auto",
                 help="target format (default: the other one)")
  p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
  p.add_argument("--max-shard-size", type=float, default=5e9, help="bytes per safetensors shard")
  p.set_defaults(func=run)


def load_any(path: Path) -> tuple[dict[str, Any], Path | None]:
  """Loads a checkpoint fully: ``({name: array}, folder with config or None)``."""
  path = Path(path)
  if is_orbax_dir(path):
    params_dir = path / "params" if (path / "params").is_dir() else path
    tree = jio.restore_orbax(params_dir)
    flat = tree if _is_flat(tree) else jtree.flatten(tree)
    return flat, (path if (path / "config.json").exists() else None)
  with jio.open_checkpoint(path) as ck:
    import numpy as np  # pylint: disable=g-import-not-at-top
    return {n: np.array(a) for n, a in ck.items()}, ck.folder


def _is_flat(tree: Any) -> bool:
  return isinstance(tree, dict) and all(not isinstance(v, (dict, list, tuple)) for v in tree.values())


def run(args: argparse.Namespace) -> int:
  src, dst = Path(args.src), Path(args.dst)
  if not src.exists():
    raise FileNotFoundError(f"{src}: no such file or folder.")
  jio.refuse_pickle(src)
  to = args.to
  if to == "auto":
    to = "safetensors" if is_orbax_dir(src) else "orbax"
  jio.check_output_dir(dst, args.overwrite)
  flat, folder = load_any(src)
  if to == "safetensors":
    with jio.SafetensorsWriter(dst, max_shard_bytes=args.max_shard_size,
                               overwrite=args.overwrite) as w:
      for n, a in flat.items():
        w.add(n, a)
      w.copy_from(folder, ("config.json",) + jio.TOKENIZER_FILES)
  else:
    with jio.atomic_dir(dst, overwrite=args.overwrite) as tmp:
      jio.save_orbax(flat, tmp / "params")
      if folder is not None:
        for fn in ("config.json",) + jio.TOKENIZER_FILES:
          if (Path(folder) / fn).is_file():
            shutil.copyfile(Path(folder) / fn, tmp / fn)
  print(f"wrote {dst} ({to}, {len(flat)} tensors)")
  return 0
