"""The runnable examples in the docstrings of jaxparams.models run (tests/test_docstrings.py
covers the other packages). The family modules run by default; the older modules' examples
(BERT, MiniLM, ...) only in the slow run, to keep the default suite's time budget."""

import doctest
import importlib
import pkgutil

import pytest

import jaxparams.models

FAMILY_MODULES = {"attention", "config_check", "families", "gemma", "hf_gemma", "hf_llama", "llama",
                  "mistral", "phi3", "qwen", "rope", "tokenizer"}
MODULES = sorted(["jaxparams.models"] + [
    i.name for i in pkgutil.iter_modules(jaxparams.models.__path__, "jaxparams.models.")])


@pytest.mark.parametrize("name", [
    pytest.param(n, marks=[] if n.rsplit(".", 1)[-1] in FAMILY_MODULES else [pytest.mark.slow])
    for n in MODULES])
def test_doctests(name):
  result = doctest.testmod(importlib.import_module(name),
                           optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
  assert result.failed == 0
