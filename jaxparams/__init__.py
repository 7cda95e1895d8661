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

from jaxparams import adapt, calib, edit, io, merge, models, prune, quant, scale, transform, tree

__version__ = "0.1.0"

__all__ = [
    "adapt", "calib", "edit", "io", "merge", "models", "prune", "quant", "scale", "transform",
    "tree", "__version__",
]
