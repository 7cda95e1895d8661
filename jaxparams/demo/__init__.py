"""Demo and example-data code for ``jaxparams demo``, kept outside the library areas.

* :mod:`jaxparams.demo.foundation`: demo step 1 (the packaged all-MiniLM-L6-v2 in Flax).
* :mod:`jaxparams.demo.example`: :func:`write_example`, a tiny base + two fine-tunes + a
  mergekit recipe on disk (``jaxparams demo --example DIR``).

* :mod:`jaxparams.demo.facts_example`: the small facts LM shipped for ``jaxparams edit`` (written
  into the example folder with its request and statistics text).
* :mod:`jaxparams.demo.report`: the report folder of PNG plots of ``jaxparams demo``.

The merge, quantization, pruning, adapter and edit steps of the demo live here too (one module
each).

Example:
  >>> from jaxparams.demo import write_example
  >>> write_example.__name__
  'write_example'
"""

from jaxparams.demo.example import write_example

__all__ = ["write_example"]
