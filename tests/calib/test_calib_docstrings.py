"""The runnable examples in jaxparams.calib's docstrings run."""

import doctest
import importlib

import pytest

MODULES = ["jaxparams.calib", "jaxparams.calib.capture", "jaxparams.calib.corpus",
           "jaxparams.calib.fisher", "jaxparams.calib.obs", "jaxparams.calib.sequential",
           "jaxparams.calib.stats"]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
  result = doctest.testmod(importlib.import_module(name),
                           optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.attempted > 0 and result.failed == 0
