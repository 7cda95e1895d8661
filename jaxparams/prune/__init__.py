"""Pruning and sparsity: being built.

Example:
  >>> import jaxparams.prune
"""

__all__: list[str] = []
