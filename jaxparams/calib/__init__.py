"""Calibration: layer-input capture, X^T X statistics, corpus, OBS solver: being built.

Example:
  >>> import jaxparams.calib
"""

__all__: list[str] = []
