"""A HF checkpoint as the streaming quantizer sees it: the model, its name map, tensors on demand.

:func:`open_model` builds a :class:`StreamModel` from a checkpoint opened by the one HF opener
(:func:`jaxparams.models.hf_open.open_hf`, which checked ``config.json`` against the headers):
the Flax module, the flax path -> HF name map, the abstract params (shapes from the headers,
checked against the module's), and reads one tensor at a time into a fresh buffer.

Example:
  >>> from pathlib import Path
  >>> import jaxparams
  >>> from jaxparams.models.hf_open import open_hf
  >>> src = Path(jaxparams.__file__).parents[1] / 'tests/fixtures/llama_tiny'
  >>> with open_hf(src) as ck:
  ...   m = open_model(src, ck)
  ...   m.read('layers_0/mlp/down_proj/kernel').shape
  (128, 64)
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from jaxparams import io as jio
from jaxparams import tree as jtree
from jaxparams.transform.prefetch import read_tensor

__all__ = ["StreamModel", "open_model"]


@dataclasses.dataclass
class StreamModel:
  """What the streaming driver knows of a checkpoint before reading any weight."""
  reader: Any
  module: nn.Module
  config: Any
  nmap: dict[str, tuple[str, bool]]      # flax path -> (hf name, transpose)
  src_names: dict[str, str]              # hf name -> name in the files
  abstract: dict[str, jax.ShapeDtypeStruct]
  files: dict = dataclasses.field(default_factory=dict)
  extra: dict[str, str] = dataclasses.field(default_factory=dict)  # unmapped: name -> in files

  def read_hf(self, hf: str) -> np.ndarray:
    """One tensor as stored, into a fresh buffer (pread, not mmap: freed pages leave RSS)."""
    return read_tensor(self.reader, self.src_names[hf], self.files)

  def read(self, path: str) -> np.ndarray:
    """One parameter in flax layout."""
    return self.flax_view(path, self.read_hf(self.nmap[path][0]))

  def flax_view(self, path: str, stored: np.ndarray) -> np.ndarray:
    """The tensor of ``path`` as stored (HF layout) seen in flax layout (a view)."""
    return stored.T if self.nmap[path][1] else stored

  def close(self) -> None:
    for f in self.files.values():
      f.close()
    self.files.clear()


def open_model(src: Path, ck: Any) -> StreamModel:
  """The model of an opened checkpoint (:func:`jaxparams.models.hf_open.open_hf`)."""
  reader, arch, by_norm = ck.reader, ck.family, ck.by_norm
  config = ck.model_config(detect=("add_pooling_layer",))
  module = arch.module_cls(config)
  nmap = arch.name_map(config)
  missing = [hf for hf, _ in nmap.values() if hf not in by_norm]
  if missing:
    raise ValueError(f"{src}: checkpoint is missing {len(missing)} tensor(s) needed by "
                     f"{type(module).__name__}: {missing[:8]}")
  shapes = jtree.flatten(jax.eval_shape(lambda: module.init(jax.random.key(0),
                                                            jnp.zeros((1, 2), jnp.int32)))["params"])
  abstract = {}
  for path, (hf, tr) in nmap.items():
    spec = reader.spec(by_norm[hf])
    shape = tuple(spec.shape[::-1]) if tr else tuple(spec.shape)
    if shape != tuple(shapes[path].shape):
      raise ValueError(f"{spec.file}: tensor {by_norm[hf]!r} has shape {tuple(spec.shape)}, "
                       f"expected {tuple(shapes[path].shape)[::-1] if tr else shapes[path].shape}"
                       f" for {path!r}")
    abstract[path] = jax.ShapeDtypeStruct(shape, jio.to_numpy_dtype(spec.dtype)
                                          if isinstance(spec.dtype, str) else spec.dtype)
  order = list(jtree.flatten(jtree.unflatten({p: 0 for p in abstract})))
  abstract = {p: abstract[p] for p in order}
  used = {hf for hf, _ in nmap.values()}
  extra = {n: f for n, f in by_norm.items() if n not in used}   # buffers such as position_ids
  return StreamModel(reader, module, config, nmap,
                     {hf: by_norm[hf] for hf, _ in nmap.values()}, abstract, extra=extra)
