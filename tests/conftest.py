"""Test session setup: 8 fake CPU devices so sharding tests run anywhere."""

import os

# Must happen before jax is imported anywhere in the test session.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = (_flags + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The merge CLI turns jax's persistent compilation cache on by default (~/.cache/jaxparams/xla).
# In the test process that would leak into every later test, and reading executables that other
# processes (other XLA flags, the multi-process tests) wrote can crash XLA: keep it off here.
os.environ["JAXPARAMS_COMPILE_CACHE"] = "none"

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _no_persistent_compile_cache():
  """A test that turns the cache on (e.g. ``--compile-cache DIR``) turns it off again after."""
  yield
  import jax  # pylint: disable=import-outside-toplevel
  if jax.config.jax_compilation_cache_dir is not None:
    jax.config.update("jax_compilation_cache_dir", None)
    from jax._src import compilation_cache  # pylint: disable=import-outside-toplevel
    compilation_cache.reset_cache()


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
