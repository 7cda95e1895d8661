"""Test session setup: 8 fake CPU devices so sharding tests run anywhere.

Speed (issue 22 item 8): jax's persistent compilation cache is on in the test processes, in a
folder of its own (``$JAXPARAMS_TEST_COMPILE_CACHE``, default ``~/.cache/jaxparams/test-xla``;
``none`` turns it off), so a program compiled by one test module -- or by the other pytest-xdist
worker -- is loaded, not compiled again, after the per-module ``jax.clear_caches()`` below; a
second run of the suite starts warm. Only these test processes write there (their XLA flags are
the ones set below; the cache key holds the flags, the jax version and the devices), never the
command-line tools' cache. Under pytest-xdist (``-n 2 --dist loadfile``) each test file is one
unit of work, the two tests/edit files that share the trained facts LM one unit, each notebook
one (``pytest_xdist_make_scheduler``). Notebook kernels use the same cache
(``test_compile_cache_env``).
"""

import os

# Must happen before jax is imported anywhere in the test session.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The merge CLI turns jax's persistent compilation cache on by default (~/.cache/jaxparams/xla).
# In the test process that would point this process at a cache that other processes (other XLA
# flags, the multi-process tests) wrote, and reading those crashed XLA once: keep it off (the
# tests' own cache is set below, restored after each test).
os.environ["JAXPARAMS_COMPILE_CACHE"] = "none"

import pytest  # noqa: E402

# Every program is written, however fast it compiled (``$JAXPARAMS_TEST_CACHE_MIN_S`` sets a
# floor): measured on tests/prune/test_prune_drivers.py, tests/models/test_models_families.py and
# tests/merge/test_methods_properties.py (82 tests, serial), a warm run took 45 s with every
# program cached against 75 s with only those that compiled in >= 0.2 s; the cold run cost the
# same (98 vs 95 s). Loading a small eager op is cheaper than compiling it again.
_CACHE_MIN_COMPILE_S = float(os.environ.get("JAXPARAMS_TEST_CACHE_MIN_S", "0"))


def _test_compile_cache() -> str | None:
  folder = os.environ.get("JAXPARAMS_TEST_COMPILE_CACHE") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"),
      "jaxparams", "test-xla")
  return None if folder.lower() == "none" else folder


def _compile_cache_settings(folder: str | None) -> dict:
  """The jax options of the tests' cache; upper-cased, they are its environment variables."""
  return {"jax_compilation_cache_dir": folder,
          "jax_persistent_cache_min_compile_time_secs": _CACHE_MIN_COMPILE_S,
          "jax_persistent_cache_min_entry_size_bytes": 0}


def _use_compile_cache(folder: str | None) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  from jax._src import compilation_cache  # pylint: disable=import-outside-toplevel
  for name, value in _compile_cache_settings(folder).items():
    jax.config.update(name, value)
  compilation_cache.reset_cache()


def _work_unit(nodeid: str) -> str:
  """The pytest-xdist unit of work of a test: its file, the facts-LM files of tests/edit, one
  notebook, or the doctests of one area (``tests/test_docstrings.py::jaxparams.quant``)."""
  path = nodeid.split("::", 1)[0]
  if path.endswith("tests/test_notebooks.py"):
    return nodeid  # independent, each a kernel of its own for up to a minute
  if path.endswith("tests/test_docstrings.py") and "[" in nodeid:
    module = nodeid.split("[", 1)[1].rstrip("]")  # independent modules; ~15 min in all
    return f"{path}::{'.'.join(module.split('.')[:2])}"
  if path.endswith(("tests/edit/test_facts_lm.py", "tests/edit/test_wise.py")):
    return "tests/edit/tiny_lm"  # one worker trains the session-scoped LM of tests/edit/conftest.py
  return path  # a file's module-scoped fixtures (a model built and compiled once) on one worker


# Seconds of the 40 slowest work units in a cold-cache `-n 2` run (2026-12-07, sums of
# --durations=0; see benchmarks/RESULTS.md, "Test suite time"); any other unit counts half a
# second a test, at most 35 s. Units start longest first (LPT), so the two workers finish
# together instead of one running a long unit alone at the end (xdist's own order, by number
# of tests, left the two slowest notebooks to the last minutes).
_UNIT_SECONDS = {
    "edit/tiny_lm": 40,  # "edit" (all of tests/edit) was one unit of 684 s until it was split
    "edit/test_edit_bert.py": 100,
    "edit/test_edit_model.py": 60,
    "kernels/test_dequant_matmul.py": 140,  # 267 before its GPU export test took each kernel once
    "test_notebooks.py::test_notebook_runs_and_draws_its_figures[09_training.py]": 196,
    "test_notebooks.py::test_notebook_runs_and_draws_its_figures[08_sparsity.py]": 190,
    "train/test_train_configs.py": 154,
    "test_docstrings.py::jaxparams.adapt": 145,
    "test_docstrings.py::jaxparams.prune": 138,
    "adapt/test_streamadapter.py": 137,
    "test_docstrings.py::jaxparams.quant": 126,
    "predict/test_predict.py": 119,
    "quant/test_qm_omniquant.py": 109,
    "test_notebooks.py::test_notebook_runs_and_draws_its_figures[03_quantization.py]": 97,
    "test_docstrings.py::jaxparams.models": 94,
    "train/test_zo.py": 88,
    "quant/test_qr_outliers.py": 87,
    "train/test_multihost.py": 86,
    "test_docstrings.py::jaxparams.demo": 73,
    "quant/test_qr_rotate.py": 67,
    "test_notebooks.py::test_notebook_runs_and_draws_its_figures[05_adapters.py]": 63,
    "test_docstrings.py::jaxparams.edit": 62,
    "merge/test_learned_recipe.py": 61,
    "test_readme.py": 61,
    "test_docstrings.py::jaxparams.calib": 60,
    "test_docstrings.py::jaxparams.predict": 57,
    "kernels/test_merge_sparsify.py": 52,
    "merge/test_learned_suite.py": 51,
    "adapt/test_adapt_finetune.py": 50,
    "models/test_models_families_quantize.py": 49,
    "train/test_train_methods.py": 48,
    "fuzz/test_fuzz_safetensors.py": 48,
    "prune/test_prune_rf8_format.py": 46,
    "models/test_models_docstrings.py": 46,
    "prune/test_prune_priors.py": 44,
    "prune/test_prune_training.py": 41,
    "demo/test_demo_edit_example.py": 39,
    "test_notebooks.py::test_notebook_runs_and_draws_its_figures[04_growth.py]": 39,
    "quant/test_qm_autoround.py": 39,
    "fuzz/test_crash_injection.py": 37,
    "quant/test_qp_stream.py": 36,
    "train/test_wtacrs.py": 36,
}


def _unit_cost(unit: str, n_tests: int) -> float:
  return _UNIT_SECONDS.get(unit.removeprefix("tests/"), min(0.5 * n_tests, 35.0))


def pytest_collection_modifyitems(config, items):
  """Under ``--dist loadfile``: items ordered by work unit, the costliest unit first (a unit's
  tests keep their order, so module fixtures are built once)."""
  if config.getoption("dist", None) != "loadfile":
    return
  units = {id(item): _work_unit(item.nodeid) for item in items}
  counts: dict[str, int] = {}
  first: dict[str, int] = {}
  for i, unit in enumerate(units.values()):
    counts[unit] = counts.get(unit, 0) + 1
    first.setdefault(unit, i)
  items.sort(key=lambda it: (-_unit_cost(units[id(it)], counts[units[id(it)]]),
                             first[units[id(it)]]))


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """``--dist loadfile`` (the README's command) with the units of :func:`_work_unit`, handed
  out in collection order (costliest first, :func:`pytest_collection_modifyitems`)."""
  if config.getvalue("dist") != "loadfile":
    return None
  from xdist.scheduler import LoadFileScheduling  # pylint: disable=import-outside-toplevel
  config.option.loadscopereorder = False  # keep the cost order, not xdist's by test count

  class _Units(LoadFileScheduling):

    def _split_scope(self, nodeid: str) -> str:
      return _work_unit(nodeid)

  return _Units(config, log)


@pytest.fixture(scope="session")
def test_compile_cache_env() -> dict[str, str]:
  """Environment that gives a child process the tests' compilation cache: for processes the
  tests never kill (notebook kernels, the trainer run, the device script's dry run); jax writes
  an entry in place, so a killed writer could leave a truncated one."""
  folder = _test_compile_cache()
  if folder is None:
    return {}
  return {name.upper(): str(value) for name, value in _compile_cache_settings(folder).items()}


@pytest.fixture(autouse=True, scope="session")
def _session_compile_cache():
  """The tests' persistent compilation cache, set in the process that runs tests (the worker)."""
  _use_compile_cache(_test_compile_cache())


@pytest.fixture(autouse=True)
def _restore_compile_cache(_session_compile_cache):  # pylint: disable=unused-argument
  """A test that changes the cache (e.g. ``--compile-cache DIR``) is undone after."""
  yield
  import jax  # pylint: disable=import-outside-toplevel
  folder = _test_compile_cache()
  if (jax.config.jax_compilation_cache_dir != folder
      or jax.config.jax_persistent_cache_min_compile_time_secs != _CACHE_MIN_COMPILE_S):
    _use_compile_cache(folder)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_executables():
  """Drop jax's compiled executables after each test module.

  Every XLA:CPU executable holds its own memory mappings. Kept alive by jit caches across the
  ~1,300 tests of one serial run, they pass the kernel's ``vm.max_map_count`` (65,530 by
  default) and the next compile segfaults inside LLVM. Clearing per module bounds the count.
  """
  yield
  import gc  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  jax.clear_caches()
  gc.collect()


@pytest.fixture(autouse=True)
def _default_sigint_handler():
  """Each test starts with Python's own SIGINT handler.

  A full ``-n 2`` run once saw SIGINT ignored in a worker (set by code outside jaxparams, not
  found) and the Ctrl-C tests that ran after it failed; tests of handler restoration compare
  against the handler they started with.
  """
  import signal  # pylint: disable=import-outside-toplevel
  import threading  # pylint: disable=import-outside-toplevel
  if (threading.current_thread() is threading.main_thread()
      and signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
    signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
