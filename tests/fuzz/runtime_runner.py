"""Runs one category of hostile runtime inputs (issue 25) and prints ``tried/held/failed`` as JSON.

Run by ``tests/fuzz/test_fuzz_runtime.py`` in a subprocess under a memory cap
(``RLIMIT_AS``), so a regression that allocates without bound fails the build instead of
swapping the machine: ``python -m tests.fuzz.runtime_runner SEED CATEGORY:N ...``.

A case *holds* when the input is refused with one ``ValueError``/``FileNotFoundError`` line
that names where (or, for checkpoints, the newest intact step is restored with one warning);
anything else (another exception, a multi-line message, an accepted hostile input, a
published output) is a *failure*, listed with its reason.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import pathlib
import sys
import tempfile
import time
from typing import Any, Callable

import numpy as np

from tests.fuzz import runtime_cases as cases


class Tally:
  """tried / held / failed, with the first failures' reasons."""

  def __init__(self, category: str):
    self.category, self.tried, self.held, self.failures = category, 0, 0, []

  def case(self, name: str, fn: Callable[[], Any], *, expect: Callable[[BaseException], bool]
           = lambda e: True, budget_s: float = 20.0) -> None:
    self.tried += 1
    t0 = time.perf_counter()
    try:
      fn()
    except (ValueError, FileNotFoundError) as e:
      msg = str(e)
      if "\n" in msg.strip():
        self.failures.append(f"{name}: multi-line message {msg[:200]!r}")
      elif not expect(e):
        self.failures.append(f"{name}: unexpected message {msg[:200]!r}")
      elif time.perf_counter() - t0 > budget_s:
        self.failures.append(f"{name}: refused after {time.perf_counter() - t0:.1f} s")
      else:
        self.held += 1
      return
    except BaseException as e:  # pylint: disable=broad-except
      self.failures.append(f"{name}: {type(e).__name__}: {str(e)[:200]}")
      return
    self.failures.append(f"{name}: accepted")

  def check(self, name: str, fn: Callable[[], str | None]) -> None:
    """``fn`` returns None when the property holds, else the reason."""
    self.tried += 1
    try:
      reason = fn()
    except BaseException as e:  # pylint: disable=broad-except
      reason = f"{type(e).__name__}: {str(e)[:200]}"
    if reason is None:
      self.held += 1
    else:
      self.failures.append(f"{name}: {reason}")

  def report(self) -> dict[str, Any]:
    return {"category": self.category, "tried": self.tried, "held": self.held,
            "failed": self.tried - self.held, "failures": self.failures[:20]}


# -- recipes ------------------------------------------------------------------------------------

def recipes(seed: int, n: int) -> Tally:
  from jaxparams.cli.main import main as cli_main
  from jaxparams.merge.recipe import load_recipe
  from jaxparams.merge.registry import get_method
  t = Tally("recipes")
  rng = np.random.default_rng(seed)
  tmp = pathlib.Path(tempfile.mkdtemp())
  gens = [("alias_bomb", cases.alias_bomb), ("recursive_alias", cases.recursive_alias),
          ("deep_nesting", cases.deep_nesting), ("strict_types", cases.strict_type_case)]
  for i in range(n):
    name, gen = gens[i % len(gens)]
    p = tmp / f"{name}-{i}.yml"
    p.write_text(gen(rng))
    t.case(f"{name} #{i}", lambda p=p: load_recipe(p), expect=lambda e, p=p: str(p) in str(e),
           budget_s=5.0)
  for i in range(n // 2):  # huge numbers as weights
    p = tmp / f"huge-{i}.yml"
    p.write_text("merge_method: linear\nmodels:\n  - model: a\n    parameters: {weight: "
                 f"{cases.huge_number(rng)}}}\n  - model: b\n    parameters: {{weight: 1}}\n")
    t.case(f"huge_number #{i}", lambda p=p: load_recipe(p),
           expect=lambda e, p=p: str(p) in str(e) and "weight" in str(e))
  for i in range(n):  # values of the wrong type, through the method's parameter resolution
    scope, pname, value = cases.wrong_value(rng)
    method = "ties" if pname != "lambda" else "task_arithmetic"
    mp = {"weight": [1.0, 1.0]}
    gp = {}
    (mp if scope == "model" else gp)[pname] = value
    t.case(f"wrong_type {pname}={value!r} #{i}",
           lambda mp=mp, gp=gp, m=method: get_method(m).resolve_config(2, mp, gp),
           expect=lambda e, pname=pname: pname in str(e))
  for i in range(2):  # the command line: an alias bomb and a wrong value, one line, exit 2
    p = tmp / f"cli-{i}.yml"
    p.write_text(cases.alias_bomb(rng) if i == 0 else
                 "merge_method: ties\nbase_model: a\nmodels: [{model: b, parameters: {weight: "
                 "true}}]\nparameters: {normalize: maybe}\n")

    def run(p=p, i=i):
      err = io.StringIO()
      with contextlib.redirect_stderr(err):
        rc = cli_main(["merge", str(p), str(tmp / f"out-{i}")])
      lines = err.getvalue().strip().splitlines()
      if rc != 2 or len(lines) != 1 or "Traceback" in err.getvalue():
        return f"rc {rc}, stderr {err.getvalue()[:300]!r}"
      if (tmp / f"out-{i}").exists():
        return "output published"
      return None
    t.check(f"cli #{i}", run)
  return t


# -- size limits --------------------------------------------------------------------------------

def _edit_model(d: pathlib.Path) -> pathlib.Path:
  import jax
  import jax.numpy as jnp
  from jaxparams.edit import facts_lm
  from jaxparams.models import Llama, LlamaConfig, to_hf
  facts_lm.prepare_data(d / "data")
  cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, max_position_embeddings=64)
  shapes = jax.eval_shape(Llama(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
  rng = np.random.default_rng(0)  # random weights without compiling init (seconds saved)
  p = jax.tree.map(lambda s: (0.02 * rng.standard_normal(s.shape)).astype(s.dtype),
                   shapes["params"])
  to_hf(p, cfg, d / "hf", copy_from=d / "data")
  return d / "hf"


def limits(seed: int, n: int) -> Tally:
  from jaxparams.cli.main import main as cli_main
  from jaxparams.io import read_calibration_text
  from jaxparams.io.limits import parse_index_ranges
  from jaxparams.merge.recipe import parse_recipe
  t = Tally("limits")
  rng = np.random.default_rng(seed)
  tmp = pathlib.Path(tempfile.mkdtemp())
  for i in range(n):
    pad = int(rng.choice([10**9, 2**17, 2**40, 10**18, -3, 0]))
    data = {"merge_method": "linear", "models": ["a", "b"],
            "tokenizer": {"source": "union", "pad_to_multiple_of": pad}}
    t.case(f"pad_to_multiple_of={pad}", lambda d=data: parse_recipe(d, source="r.yml"),
           expect=lambda e: "pad_to_multiple_of" in str(e))
  specs = ["0-1000000000", "-1", "1-", "a", "5-2", "1e3", "0-" + "9" * 40, "١", "2", "0,,7",
           "3-99999999999999", " ", ""]
  for i in range(n):
    spec = specs[i % len(specs)] if i < len(specs) else f"0-{int(rng.integers(2, 10**12))}"
    t.case(f"--layers {spec!r}", lambda s=spec: parse_index_ranges(s, count=2),
           expect=lambda e: "--layers" in str(e))
  for i in range(max(2, n // 8)):  # one line of several MB in a calibration / --stats-text file
    p = tmp / f"cal-{i}.txt"
    size = int(rng.integers(2, 9)) * 2**20
    with open(p, "w") as f:
      f.write("ok line\n" + "w " * (size // 2) + "\n")
    t.case(f"calibration line of {size >> 20} MiB",
           lambda p=p: read_calibration_text(p, what="--stats-text file"),
           expect=lambda e, p=p: str(p) in str(e))
  # The command line: --layers far beyond the model, a 200k-word prompt (one line, exit 2).
  model = _edit_model(tmp / "m")
  (tmp / "stats.txt").write_text("some text\n")
  words = " ".join(["the"] * 20_000)  # in the tiny tokenizer's vocabulary; the model takes 64
  for i, (req, layers) in enumerate([
      ({"prompt": "{} plays the", "subject": "Jorah", "target_new": "harp"}, "0-1000000000"),
      ({"prompt": words + " {} plays the", "subject": "Jorah", "target_new": "harp"}, "1")]):
    rq = tmp / f"req-{i}.jsonl"
    rq.write_text(json.dumps(req) + "\n")

    def run(rq=rq, layers=layers, i=i):
      err = io.StringIO()
      with contextlib.redirect_stderr(err):
        rc = cli_main(["edit", str(model), str(rq), str(tmp / f"out-{i}"), "--layers", layers,
                       "--stats-text", str(tmp / "stats.txt")])
      lines = err.getvalue().strip().splitlines()
      if rc != 2 or len(lines) != 1:
        return f"rc {rc}, stderr {err.getvalue()[-300:]!r}"
      if not any(w in lines[0] for w in ("--layers", "tokens", "at most 20,000 characters")):
        return f"message {lines[0][:200]!r}"
      return None
    t.check(f"edit cli #{i} ({'layers' if i == 0 else 'long prompt'})", run)
  return t


# -- tree API -----------------------------------------------------------------------------------

def tree_api(seed: int, n: int) -> Tally:
  del n
  import jax.numpy as jnp
  from jaxparams.merge import tree_api as ta
  from jaxparams.merge.registry import method_names
  t = Tally("tree API")
  rng = np.random.default_rng(seed)
  base = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
  for name in method_names():
    t.case(f"{name} with zero models", lambda name=name: ta.merge_trees(name, base, []),
           expect=lambda e: "model" in str(e))
  return t


# -- concurrency --------------------------------------------------------------------------------

def _rewrite(kind: str, f: pathlib.Path) -> None:
  st = os.stat(f)
  if kind == "append":
    with open(f, "ab") as h:
      h.write(b"\0" * 8)
  elif kind == "same_size_mtime_restored":  # in place, same size, mtime set back
    with open(f, "r+b") as h:
      h.seek(st.st_size - 4)
      h.write(b"\x7f\x7f\x7f\x7f")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
  elif kind == "replaced":
    data = f.read_bytes()
    f.unlink()
    f.write_bytes(data)
  elif kind == "removed":
    f.unlink()


def concurrency(seed: int, n: int) -> Tally:
  from jaxparams import io as jio
  from jaxparams.merge import stream
  t = Tally("concurrency")
  rng = np.random.default_rng(seed)
  tmp = pathlib.Path(tempfile.mkdtemp())
  for m in ("a", "b", "c"):
    jio.save_safetensors({f"model.layers.{i}.mlp.up_proj.weight":
                          rng.normal(size=(8, 4)).astype(np.float32) for i in range(2)}, tmp / m)
  original = stream.plan_merge
  kinds = ["append", "same_size_mtime_restored", "replaced", "removed"]
  for i in range(n):
    kind = kinds[i % len(kinds)]
    victim = ["a", "b", "c"][int(rng.integers(0, 3))]
    work = tmp / f"run-{i}"
    work.mkdir()
    for m in ("a", "b", "c"):
      (work / m).mkdir()
      for f in (tmp / m).iterdir():
        (work / m / f.name).write_bytes(f.read_bytes())
    recipe = {"merge_method": "ties", "base_model": str(work / "a"),
              "models": [{"model": str(work / m), "parameters": {"weight": 0.5, "density": 0.5}}
                         for m in ("b", "c")]}

    def plan_then_rewrite(*a, kind=kind, victim=victim, work=work, **k):
      out = original(*a, **k)
      _rewrite(kind, next((work / victim).glob("*.safetensors")))
      return out

    def run(recipe=recipe, work=work, plan=plan_then_rewrite):
      stream.plan_merge = plan
      try:
        stream.merge_checkpoints(recipe, work / "out", progress=False)
      finally:
        stream.plan_merge = original
      return None

    def holds(e, work=work, kind=kind, victim=victim):
      leftovers = [p.name for p in work.iterdir() if p.name.startswith(".out")]
      named = ("changed while it was being read" in str(e)
               or kind == "removed" and isinstance(e, FileNotFoundError) and victim in str(e))
      return named and not (work / "out").exists() and not leftovers
    t.case(f"{kind} ({victim}) #{i}", run, expect=holds)
  return t


# -- training checkpoints -----------------------------------------------------------------------

def _damage(kind: str, step_dir: pathlib.Path, rng: np.random.Generator) -> None:
  import shutil
  state = step_dir / "state"
  files = sorted(p for p in state.rglob("*") if p.is_file())
  if kind == "truncated_data":
    data = [p for p in files if "d" == p.parent.name or p.parent.name.startswith("ocdbt")
            or p.suffix == "" and p.stat().st_size > 64]
    data = data or files
    f = max(data, key=lambda p: p.stat().st_size)
    with open(f, "r+b") as h:
      h.truncate(int(f.stat().st_size * rng.uniform(0.1, 0.7)))
  elif kind == "empty_metadata":
    (step_dir / "meta" / "metadata").write_text("")
  elif kind == "missing__METADATA":
    (state / "_METADATA").unlink()
  elif kind == "emptied_manifest":
    for f in state.rglob("manifest.ocdbt"):
      f.write_bytes(b"")
  elif kind == "missing_state":
    shutil.rmtree(state)
  elif kind == "garbage_metadata":
    (step_dir / "meta" / "metadata").write_bytes(rng.bytes(64))


def checkpoints(seed: int, n: int) -> Tally:
  import jax.numpy as jnp
  from jaxparams.train import checkpoint as ck
  t = Tally("training checkpoints")
  rng = np.random.default_rng(seed)
  kinds = ["truncated_data", "empty_metadata", "missing__METADATA", "emptied_manifest",
           "missing_state", "garbage_metadata"]
  records: list[logging.LogRecord] = []

  class Keep(logging.Handler):
    def emit(self, record):
      records.append(record)
  logging.getLogger(ck.__name__).addHandler(Keep())
  logging.getLogger(ck.__name__).setLevel(logging.WARNING)
  for i in range(n):
    kind = kinds[i % len(kinds)]
    work = pathlib.Path(tempfile.mkdtemp())
    mgr = ck.open_manager(work, keep=3)
    states = {}
    for step in (1, 2):
      states[step] = {"w": rng.normal(size=(16, 8)).astype(np.float32),
                      "rng": np.array([step, 7], np.uint32)}
      ck.save(mgr, step, states[step], {"step": step, "model_config": {}})
    _damage(kind, work / "checkpoints" / "2", rng)
    records.clear()
    mgr = ck.open_manager(work, keep=3)
    target = {"w": jax_struct((16, 8), jnp.float32), "rng": jax_struct((2,), jnp.uint32)}

    def restore(step, mgr=mgr, target=target):
      meta = ck.restore_meta(mgr, step)
      if not isinstance(meta, dict) or "step" not in meta:
        raise ValueError("bad meta")
      return ck.restore_state(mgr, step, target)

    def run(mgr=mgr, restore=restore, states=states, kind=kind, work=work):
      found = ck.restore_newest_intact(mgr, restore)
      if found is None:
        return "nothing restored"
      step, state = found
      warnings = [r for r in records if r.levelno >= logging.WARNING]
      if step != 1:
        return f"restored step {step}"
      if not np.array_equal(np.asarray(state["w"]), states[1]["w"]):
        return "step 1 restored with other values"
      if len(warnings) != 1 or "\n" in warnings[0].getMessage():
        return f"{len(warnings)} warnings: {[w.getMessage()[:100] for w in warnings]}"
      # the run can save step 3 again
      ck.save(mgr, 2, states[2], {"step": 2, "model_config": {}})
      if mgr.latest_step() != 2:
        return "cannot save the damaged step again"
      return None
    t.check(f"{kind} #{i}", run)
  return t


def jax_struct(shape, dtype):
  import jax
  return jax.ShapeDtypeStruct(shape, dtype)


def _from_outputs_module(name: str) -> Callable[[int, int], Tally]:
  """A category of ``tests/fuzz/runtime_outputs.py`` (outputs, permissions, edit text)."""
  def run(seed: int, n: int) -> Tally:
    from tests.fuzz import runtime_outputs
    return getattr(runtime_outputs, name)(seed, n, Tally, _edit_model)
  return run


CATEGORIES = {"recipes": recipes, "limits": limits, "tree_api": tree_api,
              "concurrency": concurrency, "checkpoints": checkpoints,
              "outputs": _from_outputs_module("outputs"),
              "permissions": _from_outputs_module("permissions"),
              "edit_text": _from_outputs_module("edit_text")}


def main(argv: list[str]) -> int:
  """``SEED CATEGORY:N [CATEGORY:N ...]``: one ``RESULT {json}`` line per category."""
  seed = int(argv[0])
  logging.basicConfig(level=logging.ERROR)
  for spec in argv[1:]:
    category, _, n = spec.partition(":")
    t0 = time.perf_counter()
    out = CATEGORIES[category](seed, int(n or 0)).report()
    out["key"] = category
    out["seconds"] = round(time.perf_counter() - t0, 1)
    print("RESULT " + json.dumps(out), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
