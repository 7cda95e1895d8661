"""jaxparams: pure, jit-compiled transformations of model parameters in JAX.

Areas (one sub-package each): ``tree`` (paths and selection), ``io``
(checkpoints), ``models`` (reference Flax models with HF adapters), ``merge``,
``quant``, ``scale`` and ``kernels`` (Pallas kernels, each beside its jnp
reference).

Example:
  >>> import jaxparams as jp
  >>> sorted(jp.tree.flatten({'a': {'b': 1}, 'c': 2}))
  ['a/b', 'c']
"""

from jaxparams.cli.startup import quiet_interrupt_at_startup as _quiet_interrupt_at_startup

_quiet_interrupt_at_startup()  # the `jaxparams` command only: Ctrl-C while importing -> exit 130

import importlib as _importlib

__version__ = "0.1.0"

# Sub-packages are imported on first use (PEP 562): `import jaxparams` stays light (no jax,
# flax or orbax until an area needs them), `jp.merge...` works as before.
_SUBPACKAGES = ("adapt", "calib", "edit", "io", "merge", "models", "predict", "prune", "quant",
                "scale", "transform", "tree")

__all__ = [
    "adapt", "calib", "edit", "io", "merge", "models", "predict", "prune", "quant", "scale",
    "transform", "tree", "__version__",
]


def __getattr__(name: str):
  if name in _SUBPACKAGES:
    return _importlib.import_module(f"{__name__}.{name}")  # binds it here too
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
  return sorted(set(globals()) | set(__all__))
