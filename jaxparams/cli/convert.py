"""``jaxparams convert SRC DST``: safetensors <-> orbax, exact.

A safetensors checkpoint becomes a folder ``DST/`` holding ``params/`` (an
orbax checkpoint of the ``{tensor name: array}`` dict) plus ``config.json`` and
tokenizer files; the reverse direction writes HF safetensors with the same
tensor names. Loading and writing are library calls (:mod:`jaxparams.io`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jaxparams import io as jio


def add_parser(sub: argparse._SubParsersAction) -> None:
  p = sub.add_parser("convert", help="Convert a checkpoint between safetensors and orbax.",
                     description="safetensors (file or HF folder) -> orbax folder, or orbax "
                     "folder -> HF safetensors folder. Tensor names and values are kept exactly.")
  p.add_argument("src")
  p.add_argument("dst")
  p.add_argument("--to", choices=("auto", "orbax", "safetensors"), default="auto",
                 help="target format (default: the other one)")
  p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
  p.add_argument("--max-shard-size", default="5GB",
                 help="bytes per safetensors shard, e.g. 5GB, 500MB or 2e9 (default 5GB)")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  src, dst = Path(args.src), Path(args.dst)
  if not src.exists():
    raise FileNotFoundError(f"{src}: no such file or folder.")
  jio.refuse_pickle(src)
  shard_bytes = jio.parse_size(args.max_shard_size, what="--max-shard-size")
  to = args.to
  if to == "auto":
    to = "safetensors" if jio.is_orbax_dir(src) else "orbax"
  jio.check_output_dir(dst, args.overwrite)
  flat, folder = jio.load_any(src)
  side_files = ("config.json",) + jio.TOKENIZER_FILES
  if to == "safetensors":
    with jio.SafetensorsWriter(dst, max_shard_bytes=shard_bytes, overwrite=args.overwrite) as w:
      for n, a in flat.items():
        w.add(n, a)
      w.copy_from(folder, side_files)
  else:
    with jio.atomic_dir(dst, overwrite=args.overwrite) as tmp:
      jio.save_orbax(flat, tmp / "params")  # waits for orbax's writer even on Ctrl-C
      if folder is not None:
        for fn in side_files:
          src_file = jio.resolve_inside(folder, fn, where=str(folder))
          if src_file.is_file():
            (tmp / fn).write_bytes(src_file.read_bytes())
  print(f"wrote {dst} ({to}, {len(flat)} tensors)")
  return 0
