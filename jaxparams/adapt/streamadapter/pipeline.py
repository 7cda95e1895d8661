"""The whole StreamAdapter run from one config: base ICL model -> adapter -> held-out evaluation.

``run(config, workdir)`` is what ``python -m jaxparams.train --config=configs/streamadapter.py``
calls (the config's ``entry``). Stages, each skipped when its output is already in ``workdir``:

1. train the base Llama on the task family, save ``base/model.safetensors``, and measure its ICL
   accuracy against the number of demonstrations (``base_icl.json``) -- before any adapter exists;
2. train the StreamAdapter modules, base frozen (``adapter/model.safetensors``);
3. evaluate zero-shot, ICL, StreamAdapter and LoRA-TTT on held-out tasks (``results.json``).

Progress records go to ``metrics.jsonl`` and to ``progress``.

Example:
  >>> import ml_collections
  >>> cfgs = from_config(ml_collections.ConfigDict(dict(
  ...     task=dict(n_in=4, n_out=8), model=dict(hidden_size=16), base=dict(steps=1),
  ...     adapter=dict(steps=1), streamadapter=dict(num_queries=4), lora=dict(rank=2),
  ...     eval=dict(ks=(1, 2), n_tasks=8))))
  >>> cfgs['family'].vocab_size, cfgs['model'].hidden_size, cfgs['ks']
  (40, 16, (1, 2))
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any, Callable

import jax
import numpy as np

from jaxparams import io as jio
from jaxparams import tree as jtree
from jaxparams.adapt.streamadapter import training as tr
from jaxparams.adapt.streamadapter.adapter import StreamAdapterConfig
from jaxparams.adapt.streamadapter.tasks import TaskFamily, ideal_icl_accuracy
from jaxparams.models import LlamaConfig

__all__ = ["from_config", "run", "save_params", "load_params", "MODEL_DEFAULTS"]

MODEL_DEFAULTS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
_SECTIONS = ("task", "model", "base", "adapter", "streamadapter", "lora", "eval")


def _build(cls: type, section: str, values: dict) -> Any:
  valid = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(values) - set(valid))
  if unknown:
    raise ValueError(f"unknown field(s) {', '.join(f'config.{section}.{u}' for u in unknown)}; "
                     f"valid: {', '.join(valid)}")
  kw = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  return cls(**kw)


def from_config(config: Any) -> dict[str, Any]:
  """The frozen configs of every stage from an ml-collections config (sections ``task``,
  ``model``, ``base``, ``adapter``, ``streamadapter``, ``lora``, ``eval``; others are refused)."""
  d = config.to_dict() if hasattr(config, "to_dict") else dict(config)
  extra = sorted(set(d) - set(_SECTIONS) - {"entry", "seed"})
  if extra:
    raise ValueError(f"unknown config section(s) {', '.join(extra)}; valid: "
                     f"{', '.join(_SECTIONS)}, entry, seed")
  family = _build(TaskFamily, "task", d.get("task", {}))
  model = {**MODEL_DEFAULTS, **d.get("model", {})}
  model_config = _build(LlamaConfig, "model", {"vocab_size": family.vocab_size, **model})
  ev = dict(d.get("eval", {}))
  ks = tuple(int(k) for k in ev.pop("ks", (1, 2, 4, 8, 16, 32)))
  n_tasks = int(ev.pop("n_tasks", 256))
  if ev:
    raise ValueError(f"unknown field(s) {', '.join('config.eval.' + k for k in ev)}; valid: "
                     "ks, n_tasks")
  return {"family": family, "model": model_config,
          "base": _build(tr.BaseTrainConfig, "base", d.get("base", {})),
          "adapter": _build(tr.AdapterTrainConfig, "adapter", d.get("adapter", {})),
          "streamadapter": _build(StreamAdapterConfig, "streamadapter",
                                  d.get("streamadapter", {})),
          "lora": _build(tr.LoraTTTConfig, "lora", d.get("lora", {})),
          "ks": ks, "n_tasks": n_tasks}


def save_params(params: Any, folder: str | os.PathLike) -> None:
  """Saves a params tree as ``folder/model.safetensors`` (``/``-joined paths), atomically."""
  flat = {p: np.asarray(v) for p, v in jtree.flatten(params).items()}
  jio.save_safetensors(flat, str(folder))


def load_params(folder: str | os.PathLike) -> dict:
  """Inverse of :func:`save_params`."""
  flat = jio.load_safetensors(str(folder))
  return jtree.unflatten({p: np.asarray(v) for p, v in flat.items()})


def run(config: Any, workdir: str | os.PathLike, *,
        progress: Callable[[dict], None] | None = None) -> dict[str, Any]:
  """Runs (or resumes) all stages; returns the evaluation results (also ``results.json``)."""
  c = from_config(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  fam, mc = c["family"], c["model"]

  def log(rec: dict) -> None:
    with open(workdir / "metrics.jsonl", "a", encoding="utf-8") as f:
      f.write(json.dumps(rec) + "\n")
    if progress:
      progress(rec)

  if (workdir / "base").is_dir():
    base = load_params(workdir / "base")
  else:
    base, _ = tr.train_base(mc, fam, c["base"], log=log)
    save_params(base, workdir / "base")
  base_icl_path = workdir / "base_icl.json"
  if not base_icl_path.is_file():
    base_icl = tr.icl_accuracy(mc, base, fam, list(c["ks"]), c["n_tasks"])
    base_icl["ideal_icl"] = [ideal_icl_accuracy(k, fam.n_in, fam.n_out) for k in c["ks"]]
    base_icl_path.write_text(json.dumps(base_icl, indent=1))
    log({"event": "base_icl", **base_icl})
  if (workdir / "adapter").is_dir():
    ap = load_params(workdir / "adapter")
  else:
    ap, _ = tr.train_adapter(mc, base, fam, c["streamadapter"], c["adapter"], log=log)
    save_params(ap, workdir / "adapter")
  pool = tr.TaskPool(fam, c["adapter"].n_train_tasks, c["adapter"].seed)
  res = tr.evaluate(mc, base, ap, fam, c["streamadapter"], list(c["ks"]), c["n_tasks"],
                    lora=c["lora"], exclude=pool)
  res["ideal_icl"] = [ideal_icl_accuracy(k, fam.n_in, fam.n_out) for k in c["ks"]]
  res["devices"] = jax.device_count()
  (workdir / "results.json").write_text(json.dumps(res, indent=1))
  log({"event": "results", **{k: res[k] for k in ("k", "zero_shot", "icl", "streamadapter",
                                                   "lora_ttt")}})
  return res
