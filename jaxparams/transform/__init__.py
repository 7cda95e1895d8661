"""Transform records and their two drivers (tree and streaming): being built.

Example:
  >>> import jaxparams.transform
"""

__all__: list[str] = []
