"""One ``implementation=`` convention and one fallback rule for every kernel op.

Every op's ``api.py`` takes ``implementation`` and asks :func:`choose` which code to run:

* ``None`` -- the op's Pallas kernel for the default backend when there is one (TPU; NVIDIA GPU
  with compute capability >= 9.0, which Mosaic GPU needs) and the op's ``plan`` accepts the
  shapes; otherwise ``'xla'``. On CPU this is always ``'xla'``.
* ``'xla'`` -- the op's pure-``jnp`` reference (``reference.py``; XLA fuses it).
* ``'pallas'`` -- the Pallas kernel for the default backend; on CPU the TPU kernel in interpret
  mode (slow: for tests). Raises ``ValueError`` when the shapes do not tile or the GPU is older
  than Hopper, instead of falling back silently.
* ``'pallas_tpu'`` / ``'pallas_gpu'`` -- that kernel whatever the backend, compiled (not
  interpreted) unless the op is told otherwise: to lower it with
  ``jax.export(..., platforms=['tpu'|'cuda'])`` from a CPU host.

Each op names its implementations once, as data (as tokamax does): an :class:`Implementations`
table maps ``'xla'`` to the reference and each Pallas target (``'tpu'``, ``'gpu'``) to its kernel
and shape planner; :meth:`Implementations.select` applies the rule above and returns the callable
to run (a Pallas kernel differentiated as its reference). No op branches on implementation or
target names itself.

Example:
  >>> choose(None)                       # CPU host: the XLA reference
  Choice(implementation='xla', target=None, interpret=False)
  >>> choose('pallas')                   # CPU host: the TPU kernel, interpreted
  Choice(implementation='pallas', target='tpu', interpret=True)
  >>> choose('pallas_gpu').target
  'gpu'
  >>> choose('triton')
  Traceback (most recent call last):
  ...
  ValueError: unknown implementation 'triton'; valid: [None, 'xla', 'pallas', 'pallas_tpu', 'pallas_gpu']
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax

__all__ = ["IMPLEMENTATIONS", "Choice", "Implementations", "check_implementation", "choose",
           "mosaic_gpu_supported", "with_reference_vjp"]

IMPLEMENTATIONS = ("xla", "pallas", "pallas_tpu", "pallas_gpu")


@dataclasses.dataclass(frozen=True)
class Choice:
  """What an op runs: ``'xla'`` or ``'pallas'`` on ``target`` (``'tpu'``/``'gpu'``)."""

  implementation: str
  target: str | None
  interpret: bool


_XLA = Choice("xla", None, False)


def check_implementation(implementation: Any) -> None:
  """Raises ``ValueError`` listing the valid values for an unknown ``implementation``."""
  if implementation is not None and implementation not in IMPLEMENTATIONS:
    raise ValueError(f"unknown implementation {implementation!r}; valid: "
                     f"{[None, *IMPLEMENTATIONS]}")


def mosaic_gpu_supported() -> bool:
  """True when the default device is an NVIDIA GPU with compute capability >= 9.0."""
  try:
    cap = str(getattr(jax.devices()[0], "compute_capability", ""))
    return jax.default_backend() == "gpu" and int(cap.split(".")[0]) >= 9
  except (ValueError, IndexError, RuntimeError):  # no device info: be conservative
    return False


def choose(implementation: str | None, *, plan: Callable[[str], Any] | None = None,
           op: str = "kernel") -> Choice:
  """The one fallback rule (module docstring).

  Args:
    implementation: None, 'xla', 'pallas', 'pallas_tpu' or 'pallas_gpu'.
    plan: ``plan(target)`` raises ``ValueError`` (with the reason) when the op's Pallas kernel
      cannot take these shapes on ``target``; None when every shape is accepted.
    op: the op's name, for error messages.

  Returns:
    A :class:`Choice`.
  """
  check_implementation(implementation)
  if implementation == "xla":
    return _XLA
  if implementation in ("pallas_tpu", "pallas_gpu"):
    choice = Choice("pallas", implementation.removeprefix("pallas_"), False)
  else:
    backend = jax.default_backend()
    if backend == "gpu" and not mosaic_gpu_supported():
      if implementation is None:
        return _XLA
      raise ValueError(f"{op}: implementation='pallas' needs Mosaic GPU (compute capability "
                       f">= 9.0); this GPU is older. Use implementation='xla' or None.")
    if backend in ("tpu", "gpu"):
      choice = Choice("pallas", backend, False)
    elif implementation is None:
      return _XLA
    else:
      choice = Choice("pallas", "tpu", True)
  if plan is not None:
    try:
      plan(choice.target)
    except ValueError as e:
      if implementation is None:
        return _XLA
      raise ValueError(f"{op}: implementation={implementation!r} cannot run these shapes on "
                       f"{choice.target}: {e}") from e
  return choice


def with_reference_vjp(kernel_fn: Callable[..., Any], reference_fn: Callable[..., Any]
                       ) -> Callable[..., Any]:
  """``kernel_fn`` forward, differentiated as ``reference_fn`` (the specification).

  Pallas calls have no autodiff rules of their own; the reference computes the same function, so
  its VJP is the kernel's. Integer arguments get ``float0`` cotangents; None arguments are kept.

  Example:
    >>> import jax, jax.numpy as jnp
    >>> f = with_reference_vjp(lambda x: jnp.round(x * x, 3), lambda x: x * x)
    >>> float(jax.grad(f)(3.0))
    6.0
  """
  @jax.custom_vjp
  def f(*args):
    return kernel_fn(*args)

  def fwd(*args):
    return kernel_fn(*args), args

  def bwd(args, g):
    return jax.vjp(reference_fn, *args)[1](g)

  f.defvjp(fwd, bwd)
  return f


def _interpret_true(target: str) -> Any:  # pylint: disable=unused-argument
  return True


@dataclasses.dataclass(frozen=True)
class Implementations:
  """One op's implementations, by name, in one place (what ``implementation=`` selects).

  Attributes:
    op: the op's name, for error messages.
    xla: the pure-``jnp`` reference (``'xla'``); it is also the specification the Pallas kernels
      are differentiated as.
    pallas: ``{target: kernel}`` for the targets that have a Pallas kernel (``'tpu'``, ``'gpu'``);
      a kernel takes the reference's arguments plus ``interpret=``.
    plan: ``{target: plan}``; ``plan(*plan_args, **plan_kwargs)`` raises ``ValueError`` (with the
      reason) when that kernel cannot take the shapes. A target without one takes every shape.
    reference_vjp: differentiate the Pallas kernels as ``xla`` (:func:`with_reference_vjp`);
      False for integer-valued ops.
    interpret: ``interpret(target)``: the ``interpret=`` a kernel gets when it runs interpreted
      on a CPU host (``'pallas'`` there) and the caller gave none (default ``True``).

  Example:
    >>> import jax.numpy as jnp
    >>> double = Implementations('double', xla=lambda x: 2 * x,
    ...                          pallas={'tpu': lambda x, *, interpret: x + x})
    >>> double.select('xla')(jnp.ones(2)).tolist()
    [2.0, 2.0]
    >>> double.select('pallas')(jnp.ones(2)).tolist()  # CPU host: the TPU kernel, interpreted
    [2.0, 2.0]
    >>> double.select('pallas_gpu')
    Traceback (most recent call last):
    ...
    ValueError: double: no Pallas kernel for target 'gpu'; implementations: xla, pallas_tpu
  """

  op: str
  xla: Callable[..., Any]
  pallas: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)
  plan: Mapping[str, Callable[..., Any]] = dataclasses.field(default_factory=dict)
  reference_vjp: bool = True
  interpret: Callable[[str], Any] = _interpret_true

  def choose(self, implementation: str | None, *plan_args: Any, **plan_kwargs: Any) -> Choice:
    """:func:`choose` for this op, with its planners on ``plan_args`` (the one fallback rule)."""
    target = choose(implementation, op=self.op).target  # what runs, before the shapes are seen
    if target is not None and target not in self.pallas:
      if implementation is None:
        return _XLA
      names = ", ".join(["xla", *(f"pallas_{t}" for t in self.pallas)])
      raise ValueError(f"{self.op}: no Pallas kernel for target {target!r}; "
                       f"implementations: {names}")

    def plan(target: str) -> None:
      if target in self.plan:
        self.plan[target](*plan_args, **plan_kwargs)

    return choose(implementation, plan=plan, op=self.op)

  def bind(self, choice: Choice, *, interpret: Any = None) -> Callable[..., Any]:
    """The callable that runs ``choice`` (a Pallas kernel differentiated as the reference)."""
    if choice.implementation == "xla":
      return self.xla
    if interpret is None and choice.interpret:
      interpret = self.interpret(choice.target)
    kernel = functools.partial(self.pallas[choice.target], interpret=interpret)
    return with_reference_vjp(kernel, self.xla) if self.reference_vjp else kernel

  def select(self, implementation: str | None, *plan_args: Any, interpret: Any = None,
             **plan_kwargs: Any) -> Callable[..., Any]:
    """``bind(choose(implementation, *plan_args, **plan_kwargs), interpret=interpret)``."""
    return self.bind(self.choose(implementation, *plan_args, **plan_kwargs), interpret=interpret)
