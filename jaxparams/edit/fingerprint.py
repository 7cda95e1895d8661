"""Content fingerprints of tensors: what key statistics and deltas are tied to (never a name).

A fingerprint is a BLAKE2b-128 digest over each tensor's path, shape, dtype and **all** its bytes
(no sampling: hashing runs at about 1 GB/s per core, far below the cost of the statistics or
of the edit it guards). :func:`of_tensors` hashes a set of named tensors;
:func:`stats_fingerprint` the tensors the keys of one layer are computed from (the embeddings,
every earlier layer, the layer itself up to the edited kernel's module) plus the tokenizer, so
statistics saved for one model are never used for another, and stay valid after an edit of
that layer's own kernel.

Example:
  >>> import numpy as np
  >>> a = {'w': np.ones((2, 2), np.float32)}
  >>> of_tensors(a) == of_tensors({'w': np.ones((2, 2), np.float32)})
  True
  >>> of_tensors(a) == of_tensors({'w': np.ones((2, 2), np.float16)})
  False
  >>> len(of_tensors(a))
  32
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Mapping

import jax
import numpy as np

from jaxparams import tree as jtree
from jaxparams.edit import sites

__all__ = ["of_tensors", "of_tensor", "stats_fingerprint"]

_LAYER = re.compile(r"layers_(\d+)/")


def _update(h: Any, path: str, x: Any) -> None:
  a = np.ascontiguousarray(np.asarray(jax.device_get(x)))
  h.update(f"{path}\0{a.shape}\0{a.dtype.name}\0".encode())
  h.update(a.reshape(-1).view(np.uint8).data)


def of_tensor(path: str, x: Any) -> str:
  """Hex digest of one tensor (its path, shape, dtype and bytes)."""
  h = hashlib.blake2b(digest_size=16)
  _update(h, path, x)
  return h.hexdigest()


def of_tensors(tensors: Mapping[str, Any], extra: bytes = b"") -> str:
  """Hex digest of named tensors (sorted by name) and ``extra`` bytes."""
  h = hashlib.blake2b(digest_size=16)
  for path in sorted(tensors):
    _update(h, path, tensors[path])
  h.update(extra)
  return h.hexdigest()


def stats_fingerprint(params: Any, layer: int, tokenizer_bytes: bytes = b"") -> str:
  """Fingerprint of what layer ``layer``'s keys (its MLP output projection's inputs) are
  computed from: every leaf outside the layers, the layers before, and this layer's leaves
  except the edited kernel's module (an edit of that kernel leaves its statistics valid); and
  the tokenizer's bytes.

  Example:
    >>> import numpy as np
    >>> p = {'embed': np.ones(3), 'layers_0': {'mlp': {'down_proj': {'kernel': np.ones(2)},
    ...      'up_proj': {'kernel': np.ones(2)}}}, 'layers_1': {'x': np.ones(1)}}
    >>> q = {**p, 'layers_0': {'mlp': {**p['layers_0']['mlp'],
    ...                                'down_proj': {'kernel': np.zeros(2)}}}}
    >>> stats_fingerprint(p, 0) == stats_fingerprint(q, 0)   # the edited kernel itself
    True
    >>> stats_fingerprint(p, 1) == stats_fingerprint(q, 1)   # a later layer's keys change
    False
  """
  flat = jtree.flatten(params)
  own = sites.kernel_path(layer, params).rsplit("/", 1)[0] + "/"
  used = {}
  for path, x in flat.items():
    m = _LAYER.match(path)
    if m is None or int(m.group(1)) < layer or (int(m.group(1)) == layer
                                                and not path.startswith(own)):
      used[path] = x
  return of_tensors(used, f"layer {layer}\0".encode() + tokenizer_bytes)
