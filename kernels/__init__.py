"""Pallas kernels of jaxparams (installed as ``jaxparams.kernels``).

One subpackage per op, each with a pure-``jnp`` ``reference.py`` beside its
kernels (``pallas_tpu.py``, ``pallas_gpu.py``) and an ``api.py`` dispatcher, e.g.
``jaxparams.kernels.dequant_matmul``. Subpackages are imported on demand, not
from here, so importing one kernel never pulls in the others.
"""
