"""Issue 25 categories run by ``tests/fuzz/runtime_runner.py``: outputs, permissions, edit text.

* ``outputs``: a merge, lora merge, quantize or edit whose written result would be NaN/Inf
  (float32 sums beyond the float16/bfloat16 range once cast, or a method patched to return
  NaN) or of the wrong shape (a method patched to transpose or cut its result; packed codes
  cut). Holds: one-line ``ValueError`` naming the output tensor, no output folder, no
  temporary folder beside it.
* ``permissions``: an unreadable input file, an unwritable output parent, an output path that is
  a file. Holds: one line naming the path, nothing left behind.
* ``edit_text``: binary, non-UTF-8, empty, NUL-filled and huge-line calibration / ``--stats-text``
  files and edit requests files, through the readers and the ``edit`` command line (exit 2, one
  line naming the file).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import stat
import tempfile
from typing import Any, Callable

import numpy as np

UP = "model.layers.{}.mlp.up_proj.weight"


def _clean(parent: pathlib.Path, out: pathlib.Path) -> str | None:
  """None when ``out`` was not published and no temporary sibling is left."""
  left = [p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}")
          or p.name.startswith(f"{out.name}.")]
  if out.exists():
    return f"{out} published"
  return f"left behind: {left}" if left else None


def _names_output(e: BaseException, out: pathlib.Path, tensor: str | None = None) -> bool:
  msg = str(e)
  return "output tensor" in msg and (tensor is None or tensor in msg)


@contextlib.contextmanager
def _patched(obj: Any, name: str, value: Any):
  old = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, old)


def _cli(argv: list[str]) -> tuple[int, list[str], str]:
  from jaxparams.cli.main import main as cli_main
  err = io.StringIO()
  with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
    rc = cli_main(argv)
  return rc, err.getvalue().strip().splitlines(), err.getvalue()


# -- outputs ------------------------------------------------------------------------------------

def outputs(seed: int, n: int, tally: Callable[[str], Any], edit_model: Callable) -> Any:
  import ml_dtypes
  from jaxparams import io as jio
  from jaxparams.adapt.stream import merge_checkpoint as lora_merge
  from jaxparams.merge import stream as mstream
  from jaxparams.transform import stream_driver
  t = tally("outputs")
  rng = np.random.default_rng(seed)
  tmp = pathlib.Path(tempfile.mkdtemp())
  # (dtype, a large finite value, a factor that takes it beyond the dtype's range but not
  # beyond float32's: bfloat16 has float32's exponent, so only just above its largest value)
  dtypes = {"float16": (np.float16, 6.0e4, 2.0),
            "bfloat16": (ml_dtypes.bfloat16, float(np.finfo(ml_dtypes.bfloat16).max), 1.003)}

  # 1. merges whose float32 result leaves the output dtype's range (inputs all finite)
  for i in range(n):
    dname = ["float16", "bfloat16"][i % 2]
    dt, big, factor = dtypes[dname]
    work = tmp / f"overflow-{i}"
    shape = (int(rng.integers(2, 9)), int(rng.integers(2, 9)))
    hot = int(rng.integers(0, 3))
    for m in ("a", "b"):
      ts = {UP.format(k): rng.normal(size=shape).astype(dt) for k in range(3)}
      ts[UP.format(hot)][0, 0] = dt(big)
      jio.save_safetensors(ts, work / m)
    method = ["linear", "task_arithmetic"][int(rng.integers(0, 2))]
    if method == "linear":  # big + big
      recipe = {"merge_method": "linear", "parameters": {"normalize": False},
                "models": [{"model": str(work / m), "parameters": {"weight": w}}
                           for m, w in (("a", 0.5), ("b", factor - 0.5))]}
    else:  # base big/2, model big, weight w: big/2 + w big/2 = factor big (no float32 overflow)
      base = jio.load_safetensors(work / "a")
      base[UP.format(hot)][0, 0] = dt(big / 2)
      jio.save_safetensors(base, work / "a", overwrite=True)
      recipe = {"merge_method": "task_arithmetic", "base_model": str(work / "a"),
                "models": [{"model": str(work / "b"), "parameters": {"weight": 2 * factor - 1}}]}
    # computed in float32 (mergekit's `dtype`), written in the models' dtype: only the cast
    # overflows (the writer's check); computed in the models' dtype: the record's check
    f32 = i % 4 < 2
    if f32:
      recipe.update(dtype="float32", out_dtype=dname)
    out = work / "out"
    t.case(f"merge {method} {dname} overflow ({'float32 compute' if f32 else dname}) #{i}",
           lambda r=recipe, o=out: mstream.merge_checkpoints(r, o, progress=False),
           expect=lambda e, o=out, w=work, h=hot, f32=f32: (
               (_names_output(e, o, UP.format(h)) if f32 else
                f"tensor {UP.format(h)!r}" in str(e) and "NaN/Inf" in str(e))
               and _clean(w, o) is None))

  # 2. a merge method patched to return NaN / a transposed / a cut result
  base_dir = tmp / "models"
  for m in ("a", "b"):
    jio.save_safetensors({UP.format(k): rng.normal(size=(6, 4)).astype(np.float32)
                          for k in range(2)}, base_dir / m)
  original = stream_driver._Compiled.__call__  # pylint: disable=protected-access
  harms = {"nan": lambda o: o.at[0].set(np.nan), "inf": lambda o: o * np.inf,
           "transposed": lambda o: o.T, "cut": lambda o: o[:-1]}
  for i in range(max(4, n // 2)):
    harm = list(harms)[i % len(harms)]

    def patched(self, task, arrays, key, harm=harm):
      out, flags, ctx = original(self, task, arrays, key)
      return harms[harm](out), flags, ctx
    work = tmp / f"patched-{i}"
    work.mkdir()
    recipe = {"merge_method": ["linear", "ties"][i % 2], "base_model": str(base_dir / "a"),
              "models": [{"model": str(base_dir / m), "parameters": {"weight": 0.5,
                                                                       "density": 0.5}}
                         for m in ("a", "b")]}
    if i % 2 == 0:
      recipe.pop("base_model")
      for m in recipe["models"]:
        m["parameters"].pop("density")

    def run(r=recipe, o=work / "out", p=patched):
      with _patched(stream_driver._Compiled, "__call__", p):  # pylint: disable=protected-access
        mstream.merge_checkpoints(r, o, progress=False)
    t.case(f"merge patched to return {harm} #{i}", run,
           expect=lambda e, w=work: _names_output(e, w / "out") and _clean(w, w / "out") is None)

  # 3. lora merge into a float16 base whose merged weight overflows float16
  q = "model.layers.0.self_attn.q_proj"
  for i in range(max(2, n // 4)):
    work = tmp / f"lora-{i}"
    jio.save_safetensors({q + ".weight": rng.normal(size=(4, 4)).astype(np.float16),
                          "model.norm.weight": np.ones(4, np.float16)}, work / "base",
                         config={"model_type": "llama", "hidden_size": 4, "vocab_size": 8})
    ad = work / "adapter"
    ad.mkdir()
    big = float(rng.uniform(300, 3000))
    jio.write_safetensors_file(ad / "adapter_model.safetensors", {
        "base_model.model." + q + ".lora_A.weight": np.full((2, 4), big, np.float32),
        "base_model.model." + q + ".lora_B.weight": np.full((4, 2), big, np.float32)},
        {"format": "pt"})
    (ad / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"]}))
    t.case(f"lora merge overflow float16 ({big:.0f}^2) #{i}",
           lambda w=work: lora_merge(w / "base", w / "adapter", w / "out"),
           expect=lambda e, w=work: (_names_output(e, w / "out", q + ".weight")
                                     and _clean(w, w / "out") is None))

  # 4. quantize: scales patched to NaN, packed codes cut (jaxparams and gptq layouts)
  from jaxparams.quant import checkpoint as qckpt
  model = edit_model(tmp / "m")
  enc, genc = qckpt.encode_parts, qckpt.gptq_encode

  def nan_scale(leaf):
    parts = dict(enc(leaf))
    parts["qscale"] = np.asarray(parts["qscale"]).copy()
    parts["qscale"].flat[0] = np.nan
    return parts

  def cut_codes(leaf):
    parts = dict(enc(leaf))
    parts["qcodes"] = np.asarray(parts["qcodes"])[:-1]
    return parts

  def gptq_nan(name, qa, **kw):
    parts = dict(genc(name, qa, **kw))
    k = next(k for k in parts if k.endswith(".scales"))
    parts[k] = np.asarray(parts[k]).copy()
    parts[k].flat[0] = np.nan
    return parts
  qcases = [("nan scales", "encode_parts", nan_scale, "jaxparams"),
            ("cut codes", "encode_parts", cut_codes, "jaxparams"),
            ("gptq nan scales", "gptq_encode", gptq_nan, "gptq")]
  for i, (what, attr, fn, fmt) in enumerate(qcases):
    work = tmp / f"quant-{i}"
    work.mkdir()

    def runq(attr=attr, fn=fn, fmt=fmt, w=work):
      with _patched(qckpt, attr, fn):
        rc, lines, raw = _cli(["quantize", str(model), str(w / "out"), "--method", "rtn",
                               "--group-size", "32", "--format", fmt, "-q"])
      if rc != 2 or len(lines) != 1 or "output tensor" not in lines[0] or "Traceback" in raw:
        return f"rc {rc}, stderr {raw[-300:]!r}"
      return _clean(w, w / "out")
    t.check(f"quantize {what}", runq)

  # 5. edit: the edited weights come back NaN (the method patched): refused before publishing
  from jaxparams.edit import checkpoint as echk
  (tmp / "req.jsonl").write_text(json.dumps(
      {"prompt": "{} plays the", "subject": "Jorah", "target_new": "harp"}) + "\n")
  (tmp / "stats.txt").write_text("some text\n")
  real_method = echk._checkpoint_method  # pylint: disable=protected-access

  class _NaNEdit:
    def __init__(self, rec):
      self._rec = rec

    def __getattr__(self, k):
      return getattr(self._rec, k)

    def run(self, module, params, tok, reqs, **kw):  # pylint: disable=unused-argument
      import jax
      import types
      leaves, tree = jax.tree_util.tree_flatten(params)
      leaves = [np.asarray(x).copy() for x in leaves]
      leaves[-1].flat[0] = np.nan
      return jax.tree_util.tree_unflatten(tree, leaves), types.SimpleNamespace(meta={})

  def rune(w=tmp / "edit"):
    w.mkdir()
    with _patched(echk, "_checkpoint_method", lambda m: _NaNEdit(real_method(m))), \
        _patched(echk, "_key_stats", lambda *a, **k: {}), \
        _patched(echk.req_lib, "context_templates", lambda *a, **k: ["{}"]):
      rc, lines, raw = _cli(["edit", str(model), str(tmp / "req.jsonl"), str(w / "out"),
                             "--layers", "1", "--stats-text", str(tmp / "stats.txt")])
    if rc != 2 or len(lines) != 1 or "output tensor" not in lines[0]:
      return f"rc {rc}, stderr {raw[-300:]!r}"
    return _clean(w, w / "out")
  t.check("edit result NaN", rune)
  return t


# -- permissions --------------------------------------------------------------------------------

def permissions(seed: int, n: int, tally: Callable[[str], Any], edit_model: Callable) -> Any:
  from jaxparams import io as jio
  from jaxparams.merge import stream as mstream
  t = tally("permissions")
  rng = np.random.default_rng(seed)
  tmp = pathlib.Path(tempfile.mkdtemp())
  # root reads and writes whatever the modes say: each command then runs with the effective
  # user and group 'nobody' (65534), on a work tree it owns; the modules it needs are imported
  # (and its programs compiled) by a first, valid merge.
  root = os.geteuid() == 0
  tmp.chmod(0o755)
  for m in ("a", "b"):
    jio.save_safetensors({UP.format(k): rng.normal(size=(4, 4)).astype(np.float32)
                          for k in range(2)}, tmp / m)
  kinds = ["output_is_file", "output_parent_is_file", "unreadable_shard", "unreadable_folder",
           "unwritable_parent"]
  warm = {"merge_method": "linear", "models": [{"model": str(tmp / m), "parameters":
                                                {"weight": 0.5}} for m in ("a", "b")]}
  rc, _, raw = _cli_merge(tmp, warm, tmp / "warm-out")
  if rc != 0:
    t.tried += 1
    t.failures.append(f"a valid merge failed: {raw[-300:]!r}")
    return t
  model = edit_model(tmp / "m")
  quant = ["quantize", "--method", "rtn", "--group-size", "32", "-q", "--compile-cache", "none"]
  rc, _, raw = _cli([quant[0], str(model), str(tmp / "warm-q")] + quant[1:])
  if rc != 0:
    t.tried += 1
    t.failures.append(f"a valid quantize failed: {raw[-300:]!r}")
    return t
  for i in range(n):
    kind = kinds[i % len(kinds)]
    command = ("merge", "quantize")[i % 2]
    work = tmp / f"run-{i}"
    work.mkdir()
    sources = {"merge": [tmp / "a", tmp / "b"], "quantize": [model]}[command]
    for src in sources:
      (work / src.name).mkdir()
      for f in src.iterdir():
        if f.is_file():
          (work / src.name / f.name).write_bytes(f.read_bytes())
    out = work / "out"
    victim = work / sources[int(rng.integers(0, len(sources)))].name
    restore: list = []
    if kind == "output_is_file":
      out.write_text("a user's file\n")
    elif kind == "output_parent_is_file":
      (work / "file").write_text("x")
      out = work / "file" / "out"
    elif kind == "unreadable_shard":
      f = sorted(victim.glob("*.safetensors")) + sorted(victim.glob("config.json"))
      f = f[int(rng.integers(0, len(f)))]
      f.chmod(0)
      restore.append((f, 0o644))
    elif kind == "unreadable_folder":
      victim.chmod(0)
      restore.append((victim, 0o755))
    elif kind == "unwritable_parent":
      sub = work / "ro"
      sub.mkdir()
      sub.chmod(stat.S_IRUSR | stat.S_IXUSR)
      restore.append((sub, 0o755))
      out = sub / "out"
    recipe = {"merge_method": "linear", "models": [{"model": str(work / m), "parameters":
                                                    {"weight": 0.5}} for m in ("a", "b")]}

    def run(recipe=recipe, out=out, work=work, kind=kind, restore=restore, command=command,
            src=work / sources[0].name):
      try:
        with _as_nobody(work, root):
          if command == "merge":
            rc, lines, raw = _cli_merge(work, recipe, out)
          else:
            rc, lines, raw = _cli([quant[0], str(src), str(out)] + quant[1:])
      finally:
        for p, mode in restore:
          p.chmod(mode)
      if rc != 2 or len(lines) != 1 or "Traceback" in raw:
        return f"rc {rc}, stderr {raw[-300:]!r}"
      named = str(out) in lines[0] or str(out.parent) in lines[0] or str(work) in lines[0]
      if not named:
        return f"message names no path: {lines[0][:200]!r}"
      if kind == "output_is_file" and out.read_text() != "a user's file\n":
        return "the user's file was changed"
      if kind != "output_is_file" and out.exists():
        return f"{out} published"
      left = [p.name for p in out.parent.iterdir() if p.name.startswith(".out")] \
          if out.parent.is_dir() else []
      return f"left behind: {left}" if left else None
    t.check(f"{command} {kind} #{i}", run)
  return t


@contextlib.contextmanager
def _as_nobody(work: pathlib.Path, root: bool):
  """As root: ``work`` given to user/group 65534, who is the effective user inside."""
  if not root:
    yield
    return
  for dirpath, dirnames, filenames in os.walk(work):
    for name in [dirpath] + [os.path.join(dirpath, f) for f in dirnames + filenames]:
      os.chown(name, 65534, 65534, follow_symlinks=False)
  os.setegid(65534)
  os.seteuid(65534)
  try:
    yield
  finally:
    os.seteuid(0)
    os.setegid(0)


def _recipe_file(work: pathlib.Path, recipe: dict) -> str:
  p = work / "recipe.yml"
  p.write_text(json.dumps(recipe))
  return str(p)


def _cli_merge(work: pathlib.Path, recipe: dict, out: pathlib.Path) -> tuple[int, list[str], str]:
  return _cli(["merge", _recipe_file(work, recipe), str(out), "--compile-cache", "none"])


# -- edit / calibration text --------------------------------------------------------------------

def _hostile_text(kind: str, rng: np.random.Generator) -> bytes:
  if kind == "binary":
    return rng.integers(0, 256, size=int(rng.integers(64, 4096)), dtype=np.uint8).tobytes()
  if kind == "latin1":
    return "caf\xe9 cr\xe8me br\xfbl\xe9e\n".encode("latin-1") * int(rng.integers(1, 50))
  if kind == "empty":
    return b""
  if kind == "blank_lines":
    return b"\n \n\t\n" * int(rng.integers(1, 100))
  if kind == "nul":
    return b"\x00" * int(rng.integers(1, 4096))
  if kind == "huge_line":
    return b"ok\n" + b"w " * int(rng.integers(2**19 + 1, 2**21)) + b"\n"
  if kind == "utf16":
    return "some text\nmore text\n".encode("utf-16")
  raise ValueError(kind)


TEXT_KINDS = ("binary", "latin1", "empty", "blank_lines", "nul", "huge_line", "utf16")


def edit_text(seed: int, n: int, tally: Callable[[str], Any], edit_model: Callable) -> Any:
  from jaxparams.io import read_calibration_text, read_request_rows
  t = tally("edit/calibration text")
  rng = np.random.default_rng(seed)
  tmp = pathlib.Path(tempfile.mkdtemp())
  for i in range(n):
    kind = TEXT_KINDS[i % len(TEXT_KINDS)]
    p = tmp / f"{kind}-{i}.txt"
    p.write_bytes(_hostile_text(kind, rng))
    t.case(f"calibration {kind} #{i}", lambda p=p: read_calibration_text(p, what="--stats-text"),
           expect=lambda e, p=p: str(p) in str(e))
    if kind in ("blank_lines",):
      continue  # a requests file of blank lines is the next case's 'empty'
    r = tmp / f"{kind}-{i}.jsonl"
    r.write_bytes(_hostile_text(kind, rng) if kind != "huge_line" else
                  json.dumps({"prompt": "x" * 2**21 + " {}", "subject": "a",
                              "target_new": "b"}).encode())
    t.case(f"requests {kind} #{i}", lambda r=r: read_request_rows(r),
           expect=lambda e, r=r: str(r) in str(e))
  # the command line: edit with a hostile --stats-text and a hostile requests file
  model = edit_model(tmp / "m")
  good_req = tmp / "req.jsonl"
  good_req.write_text(json.dumps({"prompt": "{} plays the", "subject": "Jorah",
                                  "target_new": "harp"}) + "\n")
  good_text = tmp / "stats.txt"
  good_text.write_text("some text\n")
  for i, kind in enumerate(("binary", "latin1", "empty", "huge_line")):
    for which in ("stats", "requests"):
      bad = tmp / f"cli-{which}-{kind}.txt"
      bad.write_bytes(_hostile_text(kind, rng))
      req, text = (good_req, bad) if which == "stats" else (bad, good_text)
      work = tmp / f"cli-{which}-{i}"
      work.mkdir()

      def run(req=req, text=text, bad=bad, work=work):
        rc, lines, raw = _cli(["edit", str(model), str(req), str(work / "out"), "--layers", "1",
                               "--stats-text", str(text)])
        if rc != 2 or len(lines) != 1 or "Traceback" in raw:
          return f"rc {rc}, stderr {raw[-300:]!r}"
        if str(bad) not in lines[0]:
          return f"message does not name {bad.name}: {lines[0][:200]!r}"
        return _clean(work, work / "out")
      t.check(f"edit cli {which} {kind}", run)
  return t
