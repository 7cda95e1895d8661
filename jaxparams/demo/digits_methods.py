"""Every merging method on the digits suite, run as FusionBench runs it (one table).

Each method merges the suite's expert *backbones* (never the frozen task heads) and is
evaluated with each task's own head on its test images.

Example:
  >>> from jaxparams.demo import digits_suite as ds, digits_methods as dm
  >>> s = ds.build_suite(("rotate", "invert"), hidden=(32, 16), copies=1, pretrain_steps=20,
  ...                    finetune_steps=10)
  >>> t = dm.merge_table(s, ("pretrained", "simple_average"))
  >>> sorted(t["simple_average"]["acc"])
  ['average', 'invert', 'rotate']
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxparams.demo import digits_suite as ds

__all__ = ["TABLE_METHODS", "merge_table"]

#: Methods :func:`merge_table` knows, in table order.
TABLE_METHODS = ("pretrained", "expert", "simple_average", "task_arithmetic", "ties_sum",
                 "ties_mean", "ties", "fisher", "regmean", "adamerging_task",
                 "adamerging_layer", "adamerging_ties_task", "adamerging_ties_layer",
                 "cmaes_task", "cmaes_layer", "m2n2")

_TA_GRID = np.round(np.arange(0.1, 1.01, 0.1), 2)
_MEAN_GRID = np.round(np.arange(0.2, 3.01, 0.2), 2)


def _best_lam(suite, make, grid):
  scores = [ds.evaluate(suite, make(float(l)), split="val")["average"] for l in grid]
  return float(grid[int(np.argmax(scores))]), float(max(scores))


def merge_table(suite: ds.DigitsSuite, methods: Sequence[str] = TABLE_METHODS, *,
                density: float = 0.2, ada_steps: int = 1000, ada_lr: float = 1e-3,
                ada_init: float = 0.3, ada_clamp: tuple[float, float] | None = None,
                ada_split: str = "test",
                ada_temperature: float | None = None, ada_batch: int | None = 16,
                ada_trace_every: int = 100, ada_ties_start: bool = True,
                cma_generations: int = 30, cma_population: int = 16,
                m2n2_steps: int = 500, n_stats: int = 256, seed: int = 0
                ) -> dict[str, dict[str, Any]]:
  """Runs merging methods: ``{method: {'acc': evaluate(...), 'seconds': s, ...}}``.

  * task arithmetic and TIES: the scaling ``lam`` picked on the validation split
    (``0.1..1.0``; TIES's disjoint mean ``0.2..3.0``). TIES keeps the top ``density`` of
    each task vector over the whole model (FusionBench's threshold 20, model scope) and
    either sums the agreeing entries (``ties_sum``, FusionBench's ``merge_func sum``) or
    averages them (``ties_mean``, the TIES paper's disjoint mean); ``ties`` is the one with
    the better validation accuracy.
  * Fisher and RegMean (alpha 0.95) from ``n_stats`` training images per task.
  * AdaMerging (FusionBench's defaults): coefficients initialised at ``ada_init`` (0.3), not
    clipped (``clamp_weights: false``; ``ada_clamp=(0, 1)`` as the paper's code), Adam
    ``ada_lr`` (1e-3), ``ada_steps`` (1000) steps on the summed entropy of
    each task's own head on ``ada_batch`` of its unlabelled inputs per step (``ada_split``,
    ``ada_temperature``: see :func:`~jaxparams.demo.digits_suite.entropy_objective`);
    ``adamerging_ties_*`` learns the coefficients of TIES's trimmed, sign-elected vectors
    (AdaMerging++) and, with ``ada_ties_start`` (default), starts from the TIES merge picked
    on validation (its merge function, ``sum`` or the disjoint ``mean``, and its ``lam`` as
    the initial coefficient; ``False``: summed vectors from ``ada_init``, as the paper's
    code); ``trace`` holds entropy and test accuracy every ``ada_trace_every`` steps.
  * CMA-ES (evosax) over task-arithmetic coefficients, ``cma_population x
    cma_generations`` evaluations of the validation error.
  * M2N2 over the experts' backbones themselves (archive = the experts, per-example
    correctness on the validation images of every task, ``m2n2_steps`` children); the
    archive member with the best validation accuracy is reported.

  Raises:
    ValueError: unknown method names.
  """
  from jaxparams import merge as jm  # pylint: disable=import-outside-toplevel
  from jaxparams.merge import learned  # pylint: disable=import-outside-toplevel
  bad = [m for m in methods if m not in TABLE_METHODS]
  if bad:
    raise ValueError(f"unknown methods {bad}; valid: {list(TABLE_METHODS)}")
  base, ex = suite.pretrained, list(suite.experts)
  cache: dict[str, Any] = {}

  def ada(gran, ties=False):
    init, ties_mean = ada_init, False
    if ties and ada_ties_start:
      picked = ties_best()[1]  # start from the TIES merge picked on validation
      init, ties_mean = picked["lam"], picked["merge_func"] == "mean"
    ent = ds.entropy_objective(suite, ada_split, temperature=ada_temperature,
                               batch_size=ada_batch)
    full = ds.entropy_objective(suite, ada_split, temperature=ada_temperature)
    acc = ds.task_accuracies_fn(suite)
    probe = jax.jit(lambda bb: (full(bb), jnp.mean(acc(bb))))
    trace = []

    def record(step, lam, merged):
      e, a = probe(merged)
      trace.append({"step": int(step), "entropy": float(e), "accuracy": float(a),
                    "coef_mean": float(jnp.mean(lam))})

    every = ada_trace_every if ada_trace_every else 0
    m, lam, hist = learned.adamerging(
        base, ex, ent, granularity=gran, steps=ada_steps, lr=ada_lr, init=init,
        clamp=ada_clamp,
        ties_density=density if ties else None, ties_scope="model", ties_mean=ties_mean,
        callback_every=every, callback=record if every else None,
        key=None if ada_batch is None else jax.random.key(seed))
    w = max(1, len(hist) // 10)  # minibatch entropies: mean of the first / last 10%
    return m, {"entropy_start": float(jnp.mean(hist[:w])),
               "entropy_end": float(jnp.mean(hist[-w:])),
               "coef_mean": float(jnp.mean(lam)), "coefficients": np.asarray(lam).tolist(),
               "init": float(init), **({"ties_merge_func": "mean" if ties_mean else "sum"}
                                       if ties else {}),
               "evaluations": 0, "trace": trace}

  def ta():
    lam, v = _best_lam(suite, lambda l: jm.task_arithmetic(base, ex, lam=l), _TA_GRID)
    return jm.task_arithmetic(base, ex, lam=lam), {"lam": lam, "val": v}

  def ties_variant(normalize):
    key = f"ties_{normalize}"
    if key not in cache:
      mk = lambda l: jm.ties(base, ex, density=density, lam=l, normalize=normalize,
                             trim_scope="model")
      lam, v = _best_lam(suite, mk, _MEAN_GRID if normalize else _TA_GRID)
      cache[key] = (mk(lam), {"lam": lam, "val": v, "merge_func": "mean" if normalize
                              else "sum"})
    return cache[key]

  def ties_best():
    s, m = ties_variant(False), ties_variant(True)
    return m if m[1]["val"] > s[1]["val"] else s

  def cma(gran):
    m, lam, hist = learned.cmaes_search(base, ex, ds.val_error(suite), granularity=gran,
                                        population=cma_population,
                                        generations=cma_generations, seed=seed)
    return m, {"val_error_start": float(hist[0]), "val_error_end": float(hist[-1]),
               "evaluations": cma_population * cma_generations + 1}

  def m2n2():
    from jax.flatten_util import ravel_pytree  # pylint: disable=import-outside-toplevel
    _, unravel = ravel_pytree(base)
    pop = jnp.stack([ravel_pytree(e)[0] for e in ex])
    correct = ds.correct_fn(suite, "val")
    score = lambda w: correct(unravel(w))
    fin, sc, _ = jax.jit(lambda k, p: learned.m2n2_evolve(k, p, score, steps=m2n2_steps))(
        jax.random.key(seed), pop)
    best = int(jnp.argmax(jnp.mean(sc, 1)))
    return unravel(fin[best]), {"val": float(jnp.mean(sc[best])),
                                "evaluations": len(ex) + m2n2_steps}

  runners = {
      "pretrained": lambda: (base, {}),
      "expert": lambda: (ex, {}),
      "simple_average": lambda: (jm.linear(ex), {}),
      "task_arithmetic": ta,
      "ties_sum": lambda: ties_variant(False),
      "ties_mean": lambda: ties_variant(True),
      "ties": ties_best,
      "fisher": lambda: (learned.fisher_merge(ex, ds.expert_fishers(suite, n_stats)), {}),
      "regmean": lambda: (learned.regmean(ex, ds.expert_grams(suite, n_stats), alpha=0.95),
                          {}),
      "adamerging_task": lambda: ada("task"),
      "adamerging_layer": lambda: ada("layer"),
      "adamerging_ties_task": lambda: ada("task", True),
      "adamerging_ties_layer": lambda: ada("layer", True),
      "cmaes_task": lambda: cma("task"),
      "cmaes_layer": lambda: cma("layer"),
      "m2n2": m2n2,
  }
  out = {}
  for m in methods:
    t0, c0 = time.perf_counter(), time.process_time()
    params, info = runners[m]()
    jax.block_until_ready(params)
    out[m] = {"acc": ds.evaluate(suite, params), "seconds": time.perf_counter() - t0,
              "cpu_seconds": time.process_time() - c0, **info}
  return out
