"""Doctests of the edit modules (tests/test_docstrings.py lists other packages)."""

import doctest
import importlib
import pkgutil

import pytest

import jaxparams.edit

NAMES = ["jaxparams.edit"] + [i.name for i in pkgutil.iter_modules(jaxparams.edit.__path__,
                                                                   "jaxparams.edit.")]


@pytest.mark.parametrize("name", NAMES + ["jaxparams.demo.edit_step"])
def test_doctests(name):
  result = doctest.testmod(importlib.import_module(name),
                           optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0
