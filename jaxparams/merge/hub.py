"""Hugging Face Hub model ids in recipes (``model: org/name``), from the local cache only.

Published mergekit recipes name their models by Hub id. A reference that is not
a local path is looked up in ``huggingface_hub``'s cache (the optional extra
``pip install 'jaxparams[hub]'``) and never downloaded: ``HF_HUB_CACHE`` /
``HF_HOME`` / ``XDG_CACHE_HOME`` are read when the recipe is resolved (not at
import), so a cache given by the environment is used, and with or without
``HF_HUB_OFFLINE`` no network is touched. ``org/name@revision`` picks a branch,
tag or commit (default ``main``).

Example:
  >>> is_hub_id('meta-llama/Llama-3.2-1B'), is_hub_id('./base'), is_hub_id('a/b/c')
  (True, False, False)
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

__all__ = ["hub_cache_dir", "is_hub_id", "resolve_hub_model"]

_log = logging.getLogger(__name__)
_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*(?:@[\w./-]+)?$")
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_hub_id(ref: str) -> bool:
  """Whether ``ref`` has the shape of a Hub model id (``name``, ``org/name``, ``@revision``)."""
  return bool(_ID.match(ref)) and ".." not in ref


def hub_cache_dir() -> Path:
  """huggingface_hub's cache folder, from the environment as it is now.

  ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``HF_HOME/hub``, where
  ``HF_HOME`` defaults to ``$XDG_CACHE_HOME/huggingface`` or ``~/.cache/huggingface``.
  """
  env = os.environ
  cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
  if not cache:
    home = env.get("HF_HOME") or os.path.join(
        env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
        "huggingface")
    cache = os.path.join(home, "hub")
  return Path(cache).expanduser()


def _offline() -> bool:
  return any(os.environ.get(k, "").upper() in _TRUE for k in ("HF_HUB_OFFLINE",
                                                                "TRANSFORMERS_OFFLINE"))


def resolve_hub_model(ref: str, where: str = "recipe") -> Path:
  """The cached snapshot folder of Hub model ``ref`` (``org/name`` or ``org/name@rev``).

  Args:
    ref: the model id as written in the recipe.
    where: prefix of error messages (the recipe file).

  Raises:
    FileNotFoundError: neither a local folder nor in the cache (the id, the
      cache folder and the download command named), or ``huggingface_hub`` is
      not installed.
  """
  repo_id, _, revision = ref.partition("@")
  cache = hub_cache_dir()
  how = (f"download it with `hf download {repo_id}` (or `huggingface-cli download {repo_id}`) "
         "or give a local path")
  try:
    import huggingface_hub  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise FileNotFoundError(
        f"{where}: model {ref!r} is not a local folder; Hugging Face Hub ids need "
        "huggingface_hub (pip install 'jaxparams[hub]'), then " + how + ".") from None
  try:
    folder = huggingface_hub.snapshot_download(repo_id, revision=revision or None,
                                               cache_dir=cache, local_files_only=True)
  except Exception as e:  # LocalEntryNotFoundError, HFValidationError, IncompleteSnapshotError
    offline = " (HF_HUB_OFFLINE is set)" if _offline() else ""
    raise FileNotFoundError(
        f"{where}: model {ref!r} not found locally or in the Hugging Face cache at "
        f"{cache}{offline}; {how} ({type(e).__name__}).") from None
  _log.info("model %r: using the Hugging Face cache snapshot %s", ref, folder)
  return Path(folder)
