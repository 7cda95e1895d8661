"""``jaxparams convert SRC DST``: safetensors <-> orbax, exact.

A safetensors checkpoint becomes a folder ``DST/`` holding ``params/`` (an
orbax checkpoint of the ``{tensor name: array}`` dict) plus ``config.json`` and
tokenizer files; the reverse direction writes HF safetensors with the same
tensor names. Thin: parses, calls :func:`jaxparams.io.convert_checkpoint`, prints.
"""

from __future__ import annotations

import argparse

from jaxparams import io as jio


def add_parser(sub: argparse._SubParsersAction) -> None:
  from jaxparams.cli.main import SUMMARIES  # pylint: disable=import-outside-toplevel
  p = sub.add_parser("convert", help=SUMMARIES["convert"],
                     description="safetensors (file or HF folder) -> orbax folder, or orbax "
                     "folder -> HF safetensors folder. Tensor names and values are kept exactly.")
  p.add_argument("src")
  p.add_argument("dst")
  p.add_argument("--to", choices=jio.convert.FORMATS, default="auto",
                 help="target format (default: the other one)")
  p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
  p.add_argument("--max-shard-size", default="5GB",
                 help="bytes per safetensors shard, e.g. 5GB, 500MB or 2e9 (default 5GB)")
  p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
  out = jio.convert_checkpoint(args.src, args.dst, to=args.to, overwrite=args.overwrite,
                               max_shard_bytes=args.max_shard_size)
  print(f"wrote {out['out_dir']} ({out['to']}, {out['tensors']} tensors)")
  return 0
