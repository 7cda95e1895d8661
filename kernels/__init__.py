"""Pallas kernels of jaxparams (installed as ``jaxparams.kernels``)."""
