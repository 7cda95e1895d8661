"""The runnable examples in the docstrings of every module of jaxparams (kernels included) run."""

import doctest
import importlib
import pkgutil

import pytest

import jaxparams
import jaxparams.kernels

# Entry points whose import runs a program, not a library module.
SKIP = {"jaxparams.train.__main__"}


def _modules():
  for pkg in (jaxparams, jaxparams.kernels):
    yield pkg.__name__
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
      if info.name not in SKIP:
        yield info.name


MODULES = sorted(set(_modules()))


def test_every_package_is_walked():
  """Guards the walk itself: every area and every kernel op is collected."""
  for name in ("jaxparams.tree", "jaxparams.io", "jaxparams.models", "jaxparams.merge",
               "jaxparams.quant", "jaxparams.scale", "jaxparams.cli", "jaxparams.train",
               "jaxparams.demo", "jaxparams.kernels.dispatch",
               "jaxparams.kernels.dequant_matmul.api", "jaxparams.kernels.merge_sparsify.api"):
    assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
  mod = importlib.import_module(name)
  result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0
