"""The runnable examples in the docstrings of the public modules run."""

import doctest
import importlib
import pkgutil

import pytest

import jaxparams

PACKAGES = ["jaxparams.tree", "jaxparams.io", "jaxparams.quant", "jaxparams.scale", "jaxparams.transform"]


def _modules():
  for pkg in PACKAGES:
    mod = importlib.import_module(pkg)
    yield pkg
    for info in pkgutil.iter_modules(mod.__path__, pkg + "."):
      yield info.name


@pytest.mark.parametrize("name", sorted(set(_modules())))
def test_doctests(name):
  mod = importlib.import_module(name)
  result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0
