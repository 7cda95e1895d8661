"""Saving and loading a hypernetwork: safetensors weights + its config in ``config.json``.

Example:
  >>> import jax, os, tempfile
  >>> from jaxparams import predict
  >>> hn = predict.init(jax.random.key(0), predict.HypernetConfig(hid=8, layers=1, heads=2))
  >>> d = os.path.join(tempfile.mkdtemp(), 'hn')
  >>> predict.save(hn, d)
  >>> back = predict.load(d)
  >>> back.config == hn.config, jax.tree_util.tree_structure(back) == jax.tree_util.tree_structure(hn)
  (True, True)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from jaxparams import io as jio
from jaxparams import tree as jtree
from jaxparams.predict.hypernet import Hypernet, HypernetConfig, init

__all__ = ["save", "load"]


def save(hypernet: Hypernet, out_dir: str | Path, *, overwrite: bool = False) -> None:
  """Writes ``model.safetensors`` (weights by path) and ``config.json`` (``{'hypernet': ...}``)."""
  flat = {k: np.asarray(v) for k, v in jtree.flatten(hypernet.weights).items()}
  jio.save_safetensors(flat, out_dir, config={"hypernet": dataclasses.asdict(hypernet.config)},
                       overwrite=overwrite)


def load(path: str | Path) -> Hypernet:
  """Reads a folder written by :func:`save`; a missing or extra tensor raises naming it."""
  meta = jio.read_json(Path(path) / "config.json", what="hypernetwork config.json",
                       folder=path)
  if not isinstance(meta, dict) or "hypernet" not in meta:
    raise ValueError(f"{path}/config.json: expected a 'hypernet' entry (a folder written by "
                     f"jaxparams.predict.save), found keys {sorted(meta) if isinstance(meta, dict) else meta}")
  cfg = HypernetConfig(**meta["hypernet"])
  like = init(jax.random.key(0), cfg).weights
  flat = jio.load_safetensors(path)
  want = jtree.flatten(like)
  if set(flat) != set(want):
    raise ValueError(f"{path}: tensors {sorted(set(want) ^ set(flat))[:5]} missing or unexpected "
                     f"for HypernetConfig {cfg}")
  for k, sd in want.items():
    if tuple(flat[k].shape) != tuple(sd.shape):
      raise ValueError(f"{path}: tensor {k} has shape {tuple(flat[k].shape)}, expected "
                       f"{tuple(sd.shape)}")
  return Hypernet(jtree.unflatten({k: jax.numpy.asarray(v) for k, v in flat.items()}, like=like),
                  cfg)
