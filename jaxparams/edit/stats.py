"""Key statistics ``C = E[k k^T]`` of MLP output-projection inputs, through :mod:`jaxparams.calib`.

``key_stats`` streams batches of token rows through the model with the calibration layer's
jitted :func:`jaxparams.calib.stats_runner` (layer-input capture by method interception, fp32
``X^T X`` sums, padding tokens masked out; a batch may be sharded over devices and XLA sums across
them) and returns one :class:`jaxparams.calib.InputStats` per layer: ``.gram`` is
``E[k k^T]`` (the reference's ``stat.mom2.moment()``). ``save_stats`` / ``load_stats`` keep them
per model name and layer (``STATS_DIR/<model>/layers_<l>.safetensors``), so the precompute runs
once.

Example:
  >>> import jax, jax.numpy as jnp, numpy as np
  >>> from jaxparams.models import Llama, LlamaConfig
  >>> cfg = LlamaConfig(vocab_size=16, hidden_size=8, intermediate_size=16,
  ...                   num_hidden_layers=2, num_attention_heads=2)
  >>> m = Llama(cfg); p = m.init(jax.random.key(0), jnp.ones((1, 4), jnp.int32))['params']
  >>> rows = np.ones((4, 8), np.int32)
  >>> st = key_stats(m, p, [(rows, np.ones_like(rows))], layers=(1,))
  >>> st[1].gram.shape, st[1].n
  ((16, 16), 32)
"""

from __future__ import annotations

import pathlib
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams import calib
from jaxparams.edit import mlm, probe, sites

__all__ = ["KeyStats", "key_stats", "save_stats", "load_stats", "text_batches"]

# The statistics type of the calibration layer (``xtx``, ``abs_sum``, ``count``; ``.gram``).
KeyStats = calib.InputStats


def key_stats(module: Any, params: Any, batches: Iterable[tuple[np.ndarray, np.ndarray]], *,
              layers: Sequence[int], max_tokens: int | None = None) -> dict[int, KeyStats]:
  """Streams ``(ids, mask)`` batches, returning ``{layer: InputStats}`` of the MLP output
  projections' inputs (the keys).

  Args:
    module, params: The model.
    batches: Iterable of ``(int[b, t], mask[b, t])``; arrays may be sharded ``jax.Array``.
    layers: Layers whose MLP output-projection inputs to accumulate.
    max_tokens: Stop after this many tokens (subsample; ``mom2_n_samples``-like).
  """
  layers = tuple(sorted(set(int(l) for l in layers)))
  paths = {probe.kernel_path(l, module): l for l in layers}
  run = calib.stats_runner(module, tuple(paths))
  acc: dict[int, KeyStats] = {}
  seen = 0.0
  for ids, mask in batches:
    out = calib.collect_stats(module, params, [{"input_ids": ids, "attention_mask": mask}],
                              paths=tuple(paths), runner=run)
    missing = sorted(set(paths) - set(out))
    if missing:
      raise ValueError(f"key_stats: the model has no layer(s) {missing}")
    for path, l in paths.items():
      acc[l] = out[path] if l not in acc else acc[l] + out[path]
    seen = float(acc[layers[0]].count)
    if max_tokens is not None and seen >= max_tokens:
      break
  if not acc:
    raise ValueError("key_stats: no batches")
  return acc


def text_batches_mlm(tokenizer: Any, texts: Sequence[str], *, batch_size: int = 64,
                     seq_len: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
  """``[CLS] text [SEP]`` rows (truncated to ``seq_len``), right-padded, in batches: the key
  statistics' text of a masked LM (:func:`text_batches` for a causal one)."""
  cls, sep = mlm.special(tokenizer, sites.CLS), mlm.special(tokenizer, sites.SEP)
  rows = [([cls] + tokenizer.encode(t.strip(), add_special_tokens=False).ids)[:seq_len - 1]
          + [sep] for t in texts if t.strip()]
  return pad_rows(rows, batch_size, seq_len)


def text_batches(tokenizer: Any, texts: Sequence[str], *, batch_size: int = 64,
                 seq_len: int = 64) -> list[tuple[np.ndarray, np.ndarray]]:
  """``<s> text`` rows (truncated to ``seq_len``), right-padded, in batches."""
  from jaxparams.edit import requests as req_lib  # pylint: disable=g-import-not-at-top
  from jaxparams.edit import facts as facts_lib  # pylint: disable=g-import-not-at-top
  bos = tokenizer.token_to_id(facts_lib.BOS)
  rows = [([bos] + req_lib.encode_text(tokenizer, t))[:seq_len] for t in texts if t.strip()]
  return pad_rows(rows, batch_size, seq_len)


def pad_rows(rows: Sequence[Sequence[int]], batch_size: int,
             seq_len: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """Token rows right-padded to ``seq_len`` in batches of ``batch_size``: ``(ids, mask)``."""
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
         "abs_sum": np.asarray(jax.device_get(st.abs_sum), np.float32),
         "count": np.asarray([float(st.count)], np.float64)},
        {"model": model_name, "layer": str(l), "what": "sum k k^T of mlp down_proj inputs"})


def _check_stats_file(f: pathlib.Path, d: dict) -> None:
  """A saved key-statistics file holds ``xtx [k, k]``, ``count [1]`` (``abs_sum [k]``), finite."""
  if "xtx" not in d or "count" not in d:
    raise ValueError(f"{f}: not a key-statistics file: needs tensors 'xtx' and 'count', found "
                     f"{sorted(d)[:5]}")
  xtx, count = np.asarray(d["xtx"]), np.asarray(d["count"])
  k = xtx.shape[0] if xtx.ndim == 2 else -1
  if xtx.shape != (k, k) or count.size != 1 or (
      "abs_sum" in d and np.asarray(d["abs_sum"]).shape != (k,)):
    raise ValueError(f"{f}: key statistics of inconsistent shapes: xtx {xtx.shape}, count "
                     f"{count.shape}, abs_sum {np.asarray(d.get('abs_sum', xtx[:0])).shape}; "
                     "expected xtx [k, k], count [1], abs_sum [k]")
  for name in ("xtx", "count", "abs_sum"):
    if name in d and (np.asarray(d[name]).dtype.kind in "bcOSU"
                      or not np.all(np.isfinite(np.asarray(d[name], np.float64)))):
      raise ValueError(f"{f}: key statistics tensor {name!r} is not finite numbers")
  if not float(count.reshape(-1)[0]) > 0:
    raise ValueError(f"{f}: key statistics count is {float(count.reshape(-1)[0])}; expected > 0")


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
    _check_stats_file(f, d)
    xtx = jnp.asarray(d["xtx"], jnp.float32)
    abs_sum = (jnp.asarray(d["abs_sum"], jnp.float32) if "abs_sum" in d
               else jnp.zeros(xtx.shape[:1], jnp.float32))
    out[int(l)] = KeyStats(xtx, abs_sum, jnp.asarray(float(np.asarray(d["count"])[0]),
                                                     jnp.float32))
  return out
