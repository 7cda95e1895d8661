"""The runnable examples in the docstrings of jaxparams.models run (tests/test_docstrings.py
covers the other packages)."""

import doctest
import importlib
import pkgutil

import pytest

import jaxparams.models

MODULES = sorted(["jaxparams.models"] + [
    i.name for i in pkgutil.iter_modules(jaxparams.models.__path__, "jaxparams.models.")])


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
  result = doctest.testmod(importlib.import_module(name),
                           optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0
