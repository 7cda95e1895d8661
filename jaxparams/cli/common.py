"""What several ``jaxparams`` commands share (and nothing of the library's: that is a call away).

Example:
  >>> enable_compile_cache('none') is None
  True
"""

from __future__ import annotations

import os

__all__ = ["enable_compile_cache"]


def enable_compile_cache(folder: str | None) -> str | None:
  """Turns on jax's persistent compilation cache (every kernel, however fast to compile).

  ``folder`` ``None`` means ``$JAXPARAMS_COMPILE_CACHE`` or ``~/.cache/jaxparams/xla``;
  ``'none'`` leaves the cache off. Returns the folder used.
  """
  import jax  # pylint: disable=import-outside-toplevel  (the command line starts without jax)
  folder = folder or os.environ.get("JAXPARAMS_COMPILE_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "jaxparams", "xla")
  if folder.lower() == "none":
    return None
  jax.config.update("jax_compilation_cache_dir", folder)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return folder
