"""The runnable examples in jaxparams.merge.learned and the digits suite run."""

import doctest
import importlib
import pkgutil

import pytest

import jaxparams.merge.learned as learned

MODULES = ["jaxparams.merge.learned", "jaxparams.demo.digits_suite", "jaxparams.demo.digits_shifts",
           "jaxparams.demo.digits_methods"] + [
    i.name for i in pkgutil.iter_modules(learned.__path__, "jaxparams.merge.learned.")]


@pytest.mark.parametrize("name", MODULES)
def test_doctests(name):
  if name.endswith("cmaes"):
    pytest.importorskip("evosax")
  res = doctest.testmod(importlib.import_module(name),
                        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert res.failed == 0 and res.attempted > 0
