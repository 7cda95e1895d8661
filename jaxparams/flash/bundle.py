"""Row-column bundling (LLM in a flash, Alizadeh et al. 2023): one contiguous chunk per FFN neuron.

In an HF Llama checkpoint neuron ``i`` of layer ``l`` owns row ``i`` of
``gate_proj.weight`` ``[I, H]``, row ``i`` of ``up_proj.weight`` ``[I, H]`` and
column ``i`` of ``down_proj.weight`` ``[H, I]`` (strided on disk). Bundling
rewrites the three tensors into one ``model.layers.{l}.mlp.bundle`` of shape
``[I, 3H]`` whose row ``i`` is ``[gate_i | up_i | down_i]``: one read of
``3 H`` elements brings a whole neuron in. Every other tensor is copied, the
output is a plain safetensors folder (HF names, index when sharded) with
``config.json`` and ``__metadata__['jaxparams.flash'] = 'bundled'``; unbundling
gives back every tensor bit for bit (concatenation and transposition only).

Both directions are :class:`~jaxparams.transform.Transform` records run by the
streaming driver (tensor groups read with prefetch, written atomically).

Example:
  >>> import os, tempfile, numpy as np
  >>> from jaxparams.demo.tiny_llama import write_llama
  >>> from jaxparams.io import load_safetensors
  >>> d = tempfile.mkdtemp()
  >>> src = write_llama(os.path.join(d, 'm'))
  >>> _ = bundle(src, os.path.join(d, 'b'))
  >>> _ = unbundle(os.path.join(d, 'b'), os.path.join(d, 'u'))
  >>> a, b = load_safetensors(src), load_safetensors(os.path.join(d, 'u'))
  >>> sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)
  True
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import jax.numpy as jnp

from jaxparams.io import open_checkpoint
from jaxparams.transform import Check, CheckContext, StreamTask, Transform, stream_checkpoints

__all__ = ["BUNDLE_KEY", "BundleConfig", "bundle", "bundle_name", "bundle_record", "bundled_layers",
           "is_bundled", "LAYOUTS", "split_record", "unbundle", "unbundle_record"]

BUNDLE_KEY = "jaxparams.flash"
_PROJ = ("gate_proj", "up_proj", "down_proj")
_MLP = re.compile(r"^(?P<prefix>.*layers\.(?P<layer>\d+)\.mlp)\.(?P<proj>gate_proj|up_proj|down_proj)"
                  r"\.weight$")
_BUNDLE = re.compile(r"^(?P<prefix>.*layers\.(?P<layer>\d+)\.mlp)\.bundle$")
_DOWN_ROWS = re.compile(r"^(?P<prefix>.*layers\.(?P<layer>\d+)\.mlp)\.down_rows$")
LAYOUTS = ("bundled", "split")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BundleConfig:
  """Bundling has no parameters (the layout is fixed: ``[gate | up | down^T]``)."""


def bundle_name(layer: int, prefix: str = "model.layers") -> str:
  """The bundled tensor of a layer.

  Example:
    >>> bundle_name(3)
    'model.layers.3.mlp.bundle'
  """
  return f"{prefix}.{layer}.mlp.bundle"


def _bundle_static(ctx: CheckContext) -> None:
  gate, up, down = ctx.shapes
  if len(gate) != 2 or gate != up or tuple(down) != (gate[1], gate[0]):
    raise ValueError(f"{ctx.where}: gate/up must be [I, H] and down [H, I]; found gate "
                     f"{tuple(gate)}, up {tuple(up)}, down {tuple(down)}")
  if len(set(ctx.dtypes)) != 1:
    raise ValueError(f"{ctx.where}: gate/up/down dtypes differ: {[str(d) for d in ctx.dtypes]}")


def _unbundle_static(ctx: CheckContext) -> None:
  (shape,) = ctx.shapes
  if len(shape) != 2 or shape[1] % 3:
    raise ValueError(f"{ctx.where}: a bundle must be [I, 3H], found {tuple(shape)}")


def _bundle_fn(base: Any, models: Any, config: BundleConfig) -> Any:
  del base, config
  gate, up, down = models
  return jnp.concatenate([gate, up, down.T], axis=1)


def _transpose_fn(x: Any, config: BundleConfig) -> Any:
  del config
  return x.T


def _unbundle_fn(x: Any, config: BundleConfig) -> dict[str, Any]:
  del config
  gate, up, down_t = jnp.split(x, 3, axis=1)
  return {"gate_proj.weight": gate, "up_proj.weight": up, "down_proj.weight": down_t.T}


bundle_record = Transform(
    name="flash_bundle", fn=_bundle_fn, config=BundleConfig, inputs="base+models", base="ignored",
    min_models=3, max_models=3, checks=(Check("bundle_shapes", static=_bundle_static),),
    description="gate/up rows and down columns of each FFN neuron -> one contiguous row")
unbundle_record = Transform(
    name="flash_unbundle", fn=_unbundle_fn, config=BundleConfig,
    checks=(Check("bundle_shape", static=_unbundle_static),),
    description="inverse of flash_bundle: [I, 3H] -> gate [I, H], up [I, H], down [H, I]")


split_record = Transform(
    name="flash_split", fn=_transpose_fn, config=BundleConfig,
    checks=(Check("matrix", static=lambda ctx: _matrix(ctx)),),
    description="down_proj [H, I] <-> down_rows [I, H] (the unbundled neuron-major layout)")


def _matrix(ctx: CheckContext) -> None:
  if len(ctx.shapes[0]) != 2:
    raise ValueError(f"{ctx.where}: expected a matrix, found shape {tuple(ctx.shapes[0])}")


def is_bundled(reader: Any) -> bool:
  """Whether an open checkpoint holds bundled FFNs (a ``*.mlp.bundle`` tensor)."""
  return any(_BUNDLE.match(n) for n in reader.names())


def bundled_layers(reader: Any) -> dict[int, str]:
  """Layer index -> bundled tensor name of an open checkpoint."""
  out = {}
  for n in reader.names():
    m = _BUNDLE.match(n)
    if m:
      out[int(m["layer"])] = n
  return out


def _copy_config(src: Path):
  def finalize(writer):
    cfg = src / "config.json" if src.is_dir() else src.parent / "config.json"
    if cfg.exists():
      writer.copy_from(cfg.parent, ("config.json",))
  return finalize


def bundle(src: str | Path, out: str | Path, *, layout: str = "bundled", overwrite: bool = False,
           max_shard_bytes: float = 5e9) -> dict[str, Any]:
  """Rewrites an HF Llama-family checkpoint with one ``[I, 3H]`` bundle per FFN layer.

  Args:
    src: the HF folder (or ``.safetensors`` file).
    out: the output folder (atomic).
    layout: ``'bundled'`` (one ``mlp.bundle`` per layer) or ``'split'``: the unbundled
      neuron-major layout of the paper's baseline (gate and up rows as they are, the down
      projection stored transposed as ``mlp.down_rows [I, H]``: each neuron's three parts are
      contiguous, in three places).
    overwrite: replace ``out``.
    max_shard_bytes: output shard size.

  Returns:
    the streaming driver's summary.

  Raises:
    ValueError: no FFN projections, a layer missing one of gate/up/down, wrong shapes,
      or ``src`` already bundled.
  """
  src = Path(src)
  if layout not in LAYOUTS:
    raise ValueError(f"bundle: unknown layout {layout!r}; valid: {list(LAYOUTS)}")
  with open_checkpoint(src) as reader:
    if is_bundled(reader) or any(_DOWN_ROWS.match(n) for n in reader.names()):
      raise ValueError(f"{src}: already bundled (found {sorted(bundled_layers(reader).values())[:2]})")
    groups: dict[str, dict[str, str]] = {}
    for n in reader.names():
      m = _MLP.match(n)
      if m:
        groups.setdefault(m["prefix"], {})[m["proj"]] = n
    if not groups:
      raise ValueError(f"{src}: no '*.layers.N.mlp.{{gate,up,down}}_proj.weight' tensors to bundle")
    tasks, done = [], set()
    for n in reader.names():
      m = _MLP.match(n)
      if not m:
        tasks.append(StreamTask(n, (("src", n),)))
        continue
      prefix = m["prefix"]
      if prefix in done:
        continue
      done.add(prefix)
      g = groups[prefix]
      missing = [p for p in _PROJ if p not in g]
      if missing:
        raise ValueError(f"{src}: layer {prefix!r} lacks {missing} (has {sorted(g)})")
      if layout == "bundled":
        tasks.append(StreamTask(f"{prefix}.bundle", tuple(("src", g[p]) for p in _PROJ),
                                bundle_record, bundle_record.make_config()))
      else:
        tasks += [StreamTask(g["gate_proj"], (("src", g["gate_proj"]),)),
                  StreamTask(g["up_proj"], (("src", g["up_proj"]),)),
                  StreamTask(f"{prefix}.down_rows", (("src", g["down_proj"]),), split_record,
                             split_record.make_config())]
    return stream_checkpoints(tasks, {"src": reader}, out, overwrite=overwrite,
                              max_shard_bytes=max_shard_bytes, finalize=_copy_config(src),
                              metadata={"format": "pt", BUNDLE_KEY: layout})


def unbundle(src: str | Path, out: str | Path, *, overwrite: bool = False,
             max_shard_bytes: float = 5e9) -> dict[str, Any]:
  """The inverse of :func:`bundle`: gives back the HF tensors bit for bit.

  Raises:
    ValueError: ``src`` holds no bundle tensor, or one whose width is not ``3H``.
  """
  src = Path(src)
  with open_checkpoint(src) as reader:
    layers = bundled_layers(reader)
    split = [n for n in reader.names() if _DOWN_ROWS.match(n)]
    if not layers and not split:
      raise ValueError(f"{src}: no '*.layers.N.mlp.bundle' or '.down_rows' tensor: not a bundled "
                       "checkpoint")
    tasks = []
    for n in reader.names():
      m = _BUNDLE.match(n)
      d = _DOWN_ROWS.match(n)
      if d:
        tasks.append(StreamTask(f"{d['prefix']}.down_proj.weight", (("src", n),), split_record,
                                split_record.make_config()))
        continue
      if not m:
        tasks.append(StreamTask(n, (("src", n),)))
        continue
      prefix = m["prefix"]
      tasks.append(StreamTask(n, (("src", n),), unbundle_record, unbundle_record.make_config(),
                              outputs={f"{p}.weight": f"{prefix}.{p}.weight" for p in _PROJ}))
    return stream_checkpoints(tasks, {"src": reader}, out, overwrite=overwrite,
                              max_shard_bytes=max_shard_bytes, finalize=_copy_config(src))
