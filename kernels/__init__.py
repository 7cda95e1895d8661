"""Pallas kernels of jaxparams (installed as ``jaxparams.kernels``).

One subpackage per op, each with a pure-``jnp`` ``reference.py`` (the
specification) beside its Pallas kernels and an ``api.py`` entry point, e.g.
``jaxparams.kernels.dequant_matmul``. Kernels that differ per chip are two files
(``dequant_matmul/pallas_tpu.py``, ``pallas_gpu.py``); kernels that are the same
code with a different tiling are one (``merge_sparsify/pallas.py``, ``target=``).
Every ``api.py`` takes ``implementation=None|'xla'|'pallas'|'pallas_tpu'|'pallas_gpu'``
with the one fallback rule of :mod:`jaxparams.kernels.dispatch`, and every op is
tested by the shared base ``tests/kernels/kernel_contract.py`` (reference vs
kernel in interpret mode, gradients, ``jax.export`` lowering for tpu and cuda).
Subpackages are imported on demand, not from here, so importing one kernel never
pulls in the others. Kernels never import the library areas (merge, quant, ...).
"""

import importlib.machinery as _machinery
import importlib.util as _util
import os as _os
import sys as _sys


def _yield_the_top_level_name() -> None:
  """Hands the name ``kernels`` to an installed package when this folder is found as one.

  From a clone's root, ``python`` puts the repository on ``sys.path`` and ``import kernels``
  would find this folder and hide an installed package of that name (Hugging Face's
  ``kernels``, which ``transformers`` imports). This folder is only ever
  ``jaxparams.kernels``: under the bare name it loads the installed package in its place, or
  raises the ``ImportError`` Python would raise without this folder.
  """
  root = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
  others = [p for p in _sys.path if _os.path.abspath(p or _os.getcwd()) != root]
  spec = _machinery.PathFinder.find_spec("kernels", others)
  if spec is None or spec.loader is None:
    del _sys.modules["kernels"]
    raise ModuleNotFoundError("No module named 'kernels' (the repository's kernels/ folder is "
                              "jaxparams.kernels, not a top-level package)", name="kernels")
  module = _util.module_from_spec(spec)
  _sys.modules["kernels"] = module
  spec.loader.exec_module(module)


if __name__ == "kernels":
  _yield_the_top_level_name()
