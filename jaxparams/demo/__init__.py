"""Demo and example-data code for ``jaxparams demo``, kept outside the library areas.

Example:
  >>> import jaxparams.demo
"""

__all__: list[str] = []
