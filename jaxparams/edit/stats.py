"""Key statistics ``C = E[k k^T]`` of MLP output-projection inputs, streamed in fp32.

``key_stats`` runs batches of token rows through the model (jitted; the batch may be sharded over
devices, XLA sums across them), accumulating ``sum k k^T`` and the token count for each layer;
padding tokens are excluded. ``save_stats`` / ``load_stats`` keep them per model name and layer
(``STATS_DIR/<model>/layers_<l>.safetensors``), so the precompute runs once.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from jaxparams.models import Llama, LlamaConfig
  >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
  ...                   num_hidden_layers=2, num_attention_heads=2)
  >>> m = Llama(cfg); p = m.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params']
  >>> rows = np.ones((4, 8), np.int32)
  >>> st = key_stats(m, p, [(rows, np.ones_like(rows))], layers=(1,))
  >>> st[1].moment().shape, int(st[1].count)
  ((16, 16), 32)
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.edit import probe

__all__ = ["KeyStats", "key_stats", "save_stats", "load_stats", "text_batches"]


@dataclasses.dataclass
class KeyStats:
  """Uncentered second moment accumulator: ``xtx = sum k k^T`` (fp32) over ``count`` tokens."""
  xtx: jax.Array
  count: jax.Array

  def moment(self) -> jax.Array:
    """``E[k k^T] = xtx / count`` (``stat.mom2.moment()`` in the reference)."""
    return self.xtx / jnp.maximum(self.count, 1).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("module", "layers"))
def _batch_xtx(module, params, ids, mask, *, layers):
  out = probe.run(module, params, ids, mask, keys=layers)
  m = mask.astype(jnp.float32)[..., None]
  res = {}
  for l in layers:
    k = out.keys[l].astype(jnp.float32) * m
    k = k.reshape(-1, k.shape[-1])
    res[l] = k.T @ k
  return res, mask.sum()


def key_stats(module: Any, params: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]], *,
              layers: Sequence[int], max_tokens: int | None = None) -> dict[int, KeyStats]:
  """Streams ``(ids, mask)`` batches, returning ``{layer: KeyStats}``.

  Args:
    module, params: The model.
    batches: Iterable of ``(int[b, t], mask[b, t])``; arrays may be sharded ``jax.Array``.
    layers: Layers whose MLP output-projection inputs to accumulate.
    max_tokens: Stop after this many tokens (subsample; ``mom2_n_samples``-like).
  """
  layers = tuple(sorted(set(int(l) for l in layers)))
  acc: dict[int, jax.Array] = {}
  count = jnp.zeros((), jnp.int32)
  for ids, mask in batches:
    xtx, n = _batch_xtx(module, params, jnp.asarray(ids), jnp.asarray(mask), layers=layers)
    for l in layers:
      acc[l] = xtx[l] if l not in acc else acc[l] + xtx[l]
    count = count + n
    if max_tokens is not None and int(count) >= max_tokens:
      break
  if not acc:
    raise ValueError("key_stats: no batches")
  return {l: KeyStats(acc[l], count) for l in layers}


def text_batches(tokenizer: Any, texts: Sequence[str], *, batch_size: int = 64,
                 seq_len: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
  """``<s> text`` rows (truncated to ``seq_len``), right-padded, in batches."""
  from jaxparams.edit import requests as req_lib  # pylint: disable=g-import-not-at-top
  from jaxparams.edit import facts as facts_lib  # pylint: disable=g-import-not-at-top
  bos = tokenizer.token_to_id(facts_lib.BOS)
  rows = [([bos] + req_lib.encode_text(tokenizer, t))[:seq_len] for t in texts if t.strip()]
  out = []
  for s in range(0, len(rows), batch_size):
    chunk = rows[s:s + batch_size]
    ids = np.zeros((len(chunk), seq_len), np.int32)
    mask = np.zeros_like(ids)
    for i, r in enumerate(chunk):
      ids[i, :len(r)] = r
      mask[i, :len(r)] = 1
    out.append((ids, mask))
  return out


def save_stats(stats: dict[int, KeyStats], folder: str | pathlib.Path, model_name: str) -> None:
  """Writes ``folder/<model_name>/layers_<l>.safetensors`` (xtx, count) for each layer."""
  from jaxparams import io as jio  # pylint: disable=g-import-not-at-top
  base = pathlib.Path(folder) / model_name.replace("/", "_")
  base.mkdir(parents=True, exist_ok=True)
  for l, st in stats.items():
    jio.write_safetensors_file(
        base / f"layers_{l}.safetensors",
        {"xtx": np.asarray(jax.device_get(st.xtx), np.float32),
         "count": np.asarray([int(st.count)], np.int64)},
        {"model": model_name, "layer": str(l), "what": "sum k k^T of mlp down_proj inputs"})


def load_stats(folder: str | pathlib.Path, model_name: str, layers: Sequence[int]
               ) -> dict[int, KeyStats]:
  """Reads stats saved by :func:`save_stats`; FileNotFoundError names a missing layer file."""
  from jaxparams import io as jio  # pylint: disable=g-import-not-at-top
  base = pathlib.Path(folder) / model_name.replace("/", "_")
  out = {}
  for l in layers:
    f = base / f"layers_{l}.safetensors"
    if not f.is_file():
      raise FileNotFoundError(f"{f}: no key statistics for model {model_name!r} layer {l}")
    d = jio.load_safetensors(f)
    out[int(l)] = KeyStats(jnp.asarray(d["xtx"]), jnp.asarray(int(np.asarray(d["count"])[0])))
  return out
