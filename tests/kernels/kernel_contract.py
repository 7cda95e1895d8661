"""The shared test base of every kernel op (``jaxparams.kernels.<op>``).

An op's test file subclasses :class:`KernelContract` as ``class TestContract(KernelContract)``
and says how to call its reference, its Pallas kernel and its ``api`` entry point on named
cases; the base then runs the same checks for every op:

* the Pallas kernel in interpret mode on CPU equals the reference, for every case and every
  target the op interprets on CPU (``INTERPRET_TARGETS``, or the pairs in ``INTERPRET_PAIRS``);
* ``api(implementation='xla')`` is the reference, ``None`` on CPU falls back to it, ``'pallas'``
  on CPU interprets the TPU kernel, an unknown implementation raises listing the valid ones;
* gradients through ``api(implementation='pallas')`` equal the reference's (``DIFF`` names the
  differentiable arguments; empty when the op has none);
* ``jax.export`` lowers the kernel for ``tpu`` (Mosaic TPU custom call) and ``cuda`` (Mosaic GPU).
  Export stops at the serialized Mosaic module (compiled on the device, not here): it proves each
  op has a lowering rule and the block shapes/layouts are accepted.

Loaded by the op test files with ``importlib`` (the suite runs in importlib mode).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest


@dataclasses.dataclass
class Case:
  """Named inputs of one op call: ``arrays`` (jax arrays, pytree) and ``static`` (python)."""

  arrays: dict[str, Any]
  static: dict[str, Any] = dataclasses.field(default_factory=dict)


def max_rel_err(out, ref) -> float:
  out = np.asarray(jnp.asarray(out, jnp.float32), np.float64)
  ref = np.asarray(jnp.asarray(ref, jnp.float32), np.float64)
  return float(np.max(np.abs(out - ref)) / max(np.max(np.abs(ref)), 1e-30))


class KernelContract:
  """Base of every op's contract test (see the module docstring)."""

  CASES: dict[str, Case] = {}        # id -> case, compared in interpret mode
  INTERPRET_TARGETS: tuple[str, ...] = ("tpu",)
  INTERPRET_PAIRS: list[tuple[str, str]] | None = None  # (case id, target); None: every pair
  API_CASE: str = ""                 # the case used for the api/gradient checks
  DIFF: tuple[str, ...] = ()         # differentiable entries of Case.arrays
  TOL: float = 1e-5                  # max relative error (max |diff| / max |ref|)
  EXPORT_MARKERS = {"tpu": "tpu_custom_call", "cuda": "mosaic_gpu"}

  # -- what each op provides ------------------------------------------------------------------
  def reference(self, case: Case) -> Any:
    raise NotImplementedError

  def kernel(self, case: Case, target: str) -> Any:
    """The Pallas kernel for ``target`` in interpret mode."""
    raise NotImplementedError

  def api(self, case: Case, implementation: str | None) -> Any:
    raise NotImplementedError

  def export(self, platform: str) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """A function calling the op's kernel for ``platform`` ('tpu'/'cuda') and its arguments."""
    raise NotImplementedError

  # -- the shared checks ------------------------------------------------------------------------
  @staticmethod
  def pytest_generate_tests(metafunc):
    cls = metafunc.cls
    if "case" in metafunc.fixturenames:
      pairs = cls.INTERPRET_PAIRS or [(c, t) for c in cls.CASES for t in cls.INTERPRET_TARGETS]
      metafunc.parametrize("case,target", [(cls.CASES[c], t) for c, t in pairs],
                           ids=[f"{c}-{t}" for c, t in pairs])
    if "platform" in metafunc.fixturenames:
      metafunc.parametrize("platform", ["tpu", "cuda"])

  def _close(self, out, ref):
    for o, r in zip(jax.tree_util.tree_leaves(out), jax.tree_util.tree_leaves(ref)):
      assert o.shape == r.shape and o.dtype == r.dtype, (o.shape, o.dtype, r.shape, r.dtype)
      assert max_rel_err(o, r) <= self.TOL, max_rel_err(o, r)

  def test_interpret_matches_reference(self, case, target):
    self._close(self.kernel(case, target), self.reference(case))

  def test_api_xla_is_the_reference(self):
    case = self.CASES[self.API_CASE]
    self._close(self.api(case, "xla"), self.reference(case))

  def test_api_default_on_cpu_falls_back_to_xla(self):
    case = self.CASES[self.API_CASE]
    for o, r in zip(jax.tree_util.tree_leaves(self.api(case, None)),
                    jax.tree_util.tree_leaves(self.api(case, "xla"))):
      np.testing.assert_array_equal(np.asarray(o), np.asarray(r))

  def test_api_pallas_on_cpu_interprets(self):
    case = self.CASES[self.API_CASE]
    self._close(self.api(case, "pallas"), self.reference(case))

  def test_api_unknown_implementation_lists_valid(self):
    with pytest.raises(ValueError, match=r"unknown implementation 'triton'.*'pallas_gpu'"):
      self.api(self.CASES[self.API_CASE], "triton")

  def test_gradients_equal_reference(self):
    if not self.DIFF:
      pytest.skip("op has no differentiable arguments")
    case = self.CASES[self.API_CASE]
    probe = jax.random.normal(jax.random.key(0), jnp.shape(self.reference(case)), jnp.float32)

    def loss(run, diff):
      c = Case({**case.arrays, **diff}, case.static)
      return jnp.sum(jnp.asarray(run(c), jnp.float32) * probe)

    diff = {k: case.arrays[k] for k in self.DIFF}
    got = jax.grad(lambda d: loss(lambda c: self.api(c, "pallas"), d))(diff)
    want = jax.grad(lambda d: loss(self.reference, d))(diff)
    for k in self.DIFF:
      assert float(jnp.max(jnp.abs(want[k]))) > 0, f"reference gradient of {k} is zero"
      self._close(got[k], want[k])

  @pytest.mark.filterwarnings("ignore:Using ``pl.pallas_call`` for Mosaic GPU:DeprecationWarning")
  def test_export_lowers_for_hardware(self, platform):
    fn, args = self.export(platform)
    exported = jax.export.export(jax.jit(fn), platforms=[platform])(*args)
    assert self.EXPORT_MARKERS[platform] in exported.mlir_module()
    assert exported.platforms == (platform,)


def load():
  """This module, for op test files (``KernelContract, Case = ...load()``) in importlib mode."""
  return KernelContract, Case, max_rel_err
