"""Training a graph hypernetwork from a config (``configs/logah.py``): the ``task='hypernet'`` run.

``python -m jaxparams.train --config=configs/logah.py --workdir=DIR`` samples the architecture
dataset (``config.archs``), trains ``jaxparams.predict`` on the byte-level prose corpus
(``jaxparams.calib.corpus.docstring_sentences``) with ``config.fit``, and writes
``DIR/hypernet`` (safetensors + ``config.json``, loadable with ``jaxparams.predict.load``) and
``DIR/metrics.jsonl`` (one ``{'event': 'train', 'step', 'loss', 'arch'}`` line per step).

Example:
  >>> import ml_collections
  >>> c = ml_collections.ConfigDict(dict(task='hypernet', seed=0, hypernet=dict(decoder='tiled'),
  ...     fit=dict(), archs=dict(n=2)))
  >>> sorted(hypernet_config(c).__dict__)[:2]
  ['bins', 'decoder']
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Callable

import jax

from jaxparams import predict
from jaxparams.calib import corpus

__all__ = ["run", "hypernet_config", "fit_config", "archs"]


def _kw(section: Any) -> dict:
  return dict(section.to_dict() if hasattr(section, "to_dict") else section)


def hypernet_config(config: Any) -> predict.HypernetConfig:
  """``config.hypernet`` as a :class:`~jaxparams.predict.HypernetConfig` (unknown fields raise)."""
  return predict.HypernetConfig(**_kw(config.hypernet))


def fit_config(config: Any) -> predict.FitConfig:
  """``config.fit`` as a :class:`~jaxparams.predict.FitConfig` (unknown fields raise)."""
  return predict.FitConfig(**_kw(config.fit))


def archs(config: Any) -> list:
  """The architecture dataset of ``config.archs`` (``n`` plus :func:`sample_configs` fields)."""
  kw = _kw(config.archs)
  n = int(kw.pop("n"))
  for k in ("depth", "width"):
    if k in kw:
      kw[k] = tuple(kw[k])
  return predict.sample_configs(n, **kw)


def run(config: Any, workdir: str | Path, progress: Callable[[dict], None] | None = None) -> Path:
  """Trains and saves the hypernetwork; returns ``workdir/hypernet``."""
  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  configs = archs(config)
  hc = hypernet_config(config)
  if not hc.seen:  # shape lookups of unseen widths go to the nearest width met in training
    hc = dataclasses.replace(hc, seen=predict.seen_sizes(configs))
  tokens = predict.byte_tokens(corpus.docstring_sentences())
  hn = predict.init(jax.random.key(int(config.seed)), hc)
  hn, hist = predict.fit(hn, configs, tokens, fit_config(config),
                         key=jax.random.key(int(config.seed) + 1), log=progress)
  with open(workdir / "metrics.jsonl", "w", encoding="utf-8") as f:
    for r in hist:
      f.write(json.dumps({"event": "train", **r}) + "\n")
  out = workdir / "hypernet"
  predict.save(hn, out, overwrite=True)
  return out
