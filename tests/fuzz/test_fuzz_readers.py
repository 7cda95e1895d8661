"""Hostile adapters, model configs and tokenizers (issue 25): one-line ``ValueError`` naming the
file, nothing published, no outside content echoed.

Seeded generators build each case from a valid folder: a symlink leading outside (to a file
holding ``SECRET``), a non-object top level, non-UTF-8 bytes, a file over the size limit (sparse,
so no disk is used), wrong types and ranges for each field, NaN/Inf, int/bool tensors, shapes
that do not fit. Every case goes through the same library entry the CLI uses (``lora merge``:
:func:`jaxparams.adapt.stream.merge_checkpoint`; the HF opener of quantize/prune/edit:
:func:`jaxparams.models.hf_open.open_hf`; the tokenizer of gptq/wanda/edit:
:func:`jaxparams.models.hf_open.hf_tokenizer`; the padded tokenizer of the calibration paths:
:func:`jaxparams.models.tokenizer.load_tokenizer`). A case *holds* when the entry raises a
``ValueError`` whose message is one line, names the file (or its folder), and does not contain
``SECRET``, and when no output folder (nor a temporary one) was left.
"""

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from tokenizers import Tokenizer, models as tok_models, pre_tokenizers

import jaxparams as jp
from jaxparams.adapt.stream import merge_checkpoint
from jaxparams.models.hf_open import hf_tokenizer, open_hf
from jaxparams.models.tokenizer import load_tokenizer

SECRET = "s3cr3t-outside-value"
FIX = Path(__file__).parents[1] / "fixtures"
Q = "model.layers.0.self_attn.q_proj"
PFX = "base_model.model."


def _outside(root: Path) -> dict[str, Path]:
  d = root / "outside"
  d.mkdir(exist_ok=True)
  files = {"json": d / "secret.json", "text": d / "passwd"}
  files["json"].write_text(json.dumps({"secret_token": SECRET, "r": 4}))
  files["text"].write_text(f"root:x:0:0:{SECRET}:/root:/bin/bash\n")
  jp.io.save_safetensors({PFX + Q + ".lora_A.weight": np.full((2, 4), 7, np.float32),
                          PFX + Q + ".lora_B.weight": np.full((4, 2), 7, np.float32)},
                         d / "w", metadata={"format": "pt"})
  files["weights"] = d / "w" / "model.safetensors"
  return files


def _base(root: Path) -> Path:
  base = root / "base"
  if not base.exists():
    rng = np.random.default_rng(0)
    jp.io.save_safetensors({Q + ".weight": rng.normal(size=(4, 4)).astype(np.float32),
                            "model.embed_tokens.weight": rng.normal(size=(8, 4)).astype(
                                np.float32),
                            "model.norm.weight": np.ones(4, np.float32)}, base,
                           config={"model_type": "llama", "hidden_size": 4, "vocab_size": 8})
  return base


def _adapter_tensors() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(1)
  return {PFX + Q + ".lora_A.weight": rng.normal(size=(2, 4)).astype(np.float32),
          PFX + Q + ".lora_B.weight": rng.normal(size=(4, 2)).astype(np.float32),
          PFX + "model.norm.weight": np.full(4, 2.0, np.float32)}


ADAPTER_CFG = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"],
               "modules_to_save": ["norm"], "bias": "none", "use_rslora": False}


def _adapter(root: Path, name: str, cfg=None, tensors=None, raw: bytes | None = None) -> Path:
  ad = root / name
  ad.mkdir()
  jp.io.write_safetensors_file(ad / "adapter_model.safetensors",
                               _adapter_tensors() if tensors is None else tensors,
                               {"format": "pt"})
  if raw is not None:
    (ad / "adapter_config.json").write_bytes(raw)
  else:
    (ad / "adapter_config.json").write_text(json.dumps(ADAPTER_CFG if cfg is None else cfg))
  return ad


# Hostile values per field: wrong types, out of range, and coercible lookalikes.
FIELD_VALUES = {
    "r": [8.7, 2.0, "2", None, True, 0, -2, 2**40, [2], {"r": 2}],
    "lora_alpha": ["16", None, True, [4], {"a": 1}, 1e400],
    "use_rslora": ["no", "false", 1, 0, None, [], "true"],
    "use_dora": ["yes", 1, None],
    "rank_pattern": [[], "q_proj", 5, {"q_proj": 8.5}, {"q_proj": "2"}, {"(": 2},
                     {"q_proj": None}, {"q_proj": True}],
    "alpha_pattern": [[], {"q_proj": "x"}, {"q_proj": None}, {"[": 1.0}, 3],
    "target_modules": [5, [1], {"q": 1}, True, "(", ["k_proj"], "nothing_matches"],
    "modules_to_save": ["norm", [1], 3, {"a": 1}],
    "bias": ["maybe", 1, None, True],
    "init_lora_weights": ["pissa", "olora", 1, None],
    "peft_type": ["IA3", 1, None],
    "lora_dropout": ["0.1", 2.0, -1],
    "inference_mode": ["yes"],
    "layers_to_transform": ["0", [0.5]],
    "use_qalora": [True],
    "secret_field": [SECRET],
}


def _adapter_cases(seed: int):
  """(name, builder(root, outside) -> adapter folder) for one seed."""
  rng = random.Random(seed)
  cases = []
  for field, values in FIELD_VALUES.items():
    for v in values:
      cfg = dict(ADAPTER_CFG, **{field: v})
      cases.append((f"{field}={v!r:.30}", lambda root, out, n, cfg=cfg: _adapter(root, n, cfg)))
  tops = [b"[]", b"[1, 2]", b'"adapter"', b"3", b"null", b"", b"\xff\xfe{}", b"{", b"{\"r\": NaN}",
          b'{"r": 2, "r": 4}', b"[" * 5000 + b"]" * 5000,
          json.dumps(dict(ADAPTER_CFG, lora_alpha=float("inf"))).encode()]
  for raw in tops:
    cases.append((f"top {raw[:20]!r}", lambda root, out, n, raw=raw: _adapter(root, n, raw=raw)))
  # random junk bytes, seeded
  for i in range(4):
    junk = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 64)))
    cases.append((f"junk{i}", lambda root, out, n, junk=junk: _adapter(root, n, raw=b"\xff" + junk)))

  def cfg_symlink(root, out, n):
    ad = _adapter(root, n)
    (ad / "adapter_config.json").unlink()
    os.symlink(out["json"], ad / "adapter_config.json")
    return ad

  def weights_symlink(root, out, n):
    ad = _adapter(root, n)
    (ad / "adapter_model.safetensors").unlink()
    os.symlink(out["weights"], ad / "adapter_model.safetensors")
    return ad

  def dotdot_symlink(root, out, n):
    ad = _adapter(root, n)
    (ad / "adapter_config.json").unlink()
    os.symlink("../outside/secret.json", ad / "adapter_config.json")
    return ad

  def huge(root, out, n):
    ad = _adapter(root, n)
    with open(ad / "adapter_config.json", "r+b") as f:
      f.truncate(jp.io.adapter_config.MAX_ADAPTER_CONFIG_BYTES + 1)  # sparse: no disk used
    return ad

  def config_dir(root, out, n):
    ad = _adapter(root, n)
    (ad / "adapter_config.json").unlink()
    (ad / "adapter_config.json").mkdir()
    return ad

  cases += [("config symlink outside", cfg_symlink), ("weights symlink outside", weights_symlink),
            ("config ../ symlink", dotdot_symlink), ("config over the limit", huge),
            ("config is a folder", config_dir)]

  def tensors(mutate):
    def build(root, out, n):
      t = _adapter_tensors()
      mutate(t)
      return _adapter(root, n, tensors=t)
    return build

  a, b = PFX + Q + ".lora_A.weight", PFX + Q + ".lora_B.weight"
  norm = PFX + "model.norm.weight"
  bad_value = rng.choice([np.nan, np.inf, -np.inf])
  tensor_cases = {
      "modules_to_save wrong shape": lambda t: t.__setitem__(norm, np.ones(7, np.float32)),
      "modules_to_save int64": lambda t: t.__setitem__(norm, np.ones(4, np.int64)),
      "modules_to_save NaN/Inf": lambda t: t[norm].__setitem__(rng.randrange(4), bad_value),
      "lora_B NaN/Inf": lambda t: t[b].__setitem__((rng.randrange(4), 0), bad_value),
      "lora_A NaN/Inf": lambda t: t[a].__setitem__((0, rng.randrange(4)), bad_value),
      "lora_A int32": lambda t: t.__setitem__(a, t[a].astype(np.int32)),
      "lora_A bool": lambda t: t.__setitem__(a, t[a] > 0),
      "lora_B float64 ok-shape int8": lambda t: t.__setitem__(b, t[b].astype(np.int8)),
      "rank mismatch": lambda t: t.__setitem__(a, np.ones((3, 4), np.float32)),
      "lora_A 3-D": lambda t: t.__setitem__(a, np.ones((2, 4, 1), np.float32)),
      "lora_embedding on a square Linear": lambda t: (
          t.__setitem__(PFX + Q + ".lora_embedding_A", t.pop(a)),
          t.__setitem__(PFX + Q + ".lora_embedding_B", t.pop(b))),
      "only lora_A": lambda t: t.pop(b),
      "zero tensors": lambda t: t.clear(),
      "tensor outside the prefix": lambda t: t.__setitem__("x.weight", np.ones(2, np.float32)),
      "module absent from the base": lambda t: (
          t.__setitem__(PFX + "model.layers.9.self_attn.q_proj.lora_A.weight", t[a]),
          t.__setitem__(PFX + "model.layers.9.self_attn.q_proj.lora_B.weight", t[b])),
  }
  for name, mutate in tensor_cases.items():
    cases.append((name, tensors(mutate)))
  return cases


def _held(err: BaseException | None, names: tuple[Path, ...], out: Path) -> str:
  """'' when the case held, else why not."""
  if err is None:
    return "accepted"
  if not isinstance(err, ValueError):
    return f"{type(err).__name__} (not ValueError): {err}"
  msg = str(err)
  if "\n" in msg:
    return f"message of {msg.count(chr(10)) + 1} lines"
  if not any(str(n) in msg for n in names):
    return f"message names no file: {msg}"
  if SECRET in msg:
    return f"outside content echoed: {msg}"
  left = [p.name for p in out.parent.iterdir() if p.name.startswith(out.name)]
  if left:
    return f"output left: {left}"
  return ""


def _run(fn, names, out):
  try:
    fn()
    err = None
  except Exception as e:  # pylint: disable=broad-except  (the property tested)
    err = e
  return _held(err, names, out)


@pytest.mark.parametrize("seed", [0])
def test_hostile_adapters(tmp_path, seed):
  out_files = _outside(tmp_path)
  base = _base(tmp_path)
  cases = _adapter_cases(seed)
  failed = {}
  for i, (name, build) in enumerate(cases):
    ad = build(tmp_path, out_files, f"ad{i}")
    out = tmp_path / f"out{i}"
    why = _run(lambda: merge_checkpoint(base, ad, out), (ad,), out)
    if why:
      failed[name] = why
  assert len(cases) >= 100
  assert not failed, f"{len(failed)} of {len(cases)} adapter cases failed: {failed}"
  # the untouched adapter merges (the generator's base case is valid)
  ad = _adapter(tmp_path, "good")
  assert merge_checkpoint(base, ad, tmp_path / "good_out")["merged"] == 1


def _tokenizer(vocab_size: int) -> Tokenizer:
  words = ["<pad>", "<unk>"] + [f"w{i}" for i in range(vocab_size - 2)]
  tok = Tokenizer(tok_models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Whitespace()
  return tok


CONFIG_VALUES = {
    "hidden_size": ["64", 64.0, -64, 0, True, None, 2**40, [64]],
    "num_hidden_layers": ["2", 2.5, 0, 10**9],
    "vocab_size": ["256", -1, 2**40, None],
    "num_attention_heads": [0, "4", 4.0],
    "model_type": [1, None, ["llama"]],
    "eos_token_id": [-1, "2", [1, "x"]],
    "torch_dtype": [3],
}


def _config_cases(seed: int):
  """(name, file kind, builder(folder, outside)) for one seed."""
  rng = random.Random(seed)
  cfg0 = json.loads((FIX / "llama_tiny" / "config.json").read_text())
  cases = []
  for field, values in CONFIG_VALUES.items():
    for v in values:
      cases.append((f"config {field}={v!r:.30}", "config.json",
                    lambda d, o, v=v, f=field: (d / "config.json").write_text(
                        json.dumps(dict(cfg0, **{f: v})))))
  tops = [b"[]", b"[1, 2]", b'"llama"', b"3", b"null", b"", b"\xff{}", b"{", b'{"a": NaN}',
          b"[" * 5000 + b"]" * 5000]
  tops += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))) + b"\xff"
           for _ in range(3)]
  for raw in tops:
    cases.append((f"config {raw[:16]!r}", "config.json",
                  lambda d, o, raw=raw: (d / "config.json").write_bytes(raw)))
    cases.append((f"tokenizer {raw[:16]!r}", "tokenizer.json",
                  lambda d, o, raw=raw: (d / "tokenizer.json").write_bytes(raw)))

  def link(name, target):
    def build(d, o):
      (d / name).unlink()
      os.symlink(o[target], d / name)
    return build

  def huge(name, size):
    def build(d, o):
      with open(d / name, "r+b") as f:
        f.truncate(size)
    return build

  def tok_json(mutate):
    def build(d, o):
      t = json.loads((d / "tokenizer.json").read_text())
      mutate(t)
      (d / "tokenizer.json").write_text(json.dumps(t))
    return build

  cases += [
      ("config symlink outside", "config.json", link("config.json", "json")),
      ("tokenizer symlink to passwd", "tokenizer.json", link("tokenizer.json", "text")),
      ("tokenizer symlink to outside json", "tokenizer.json", link("tokenizer.json", "json")),
      ("config over the limit", "config.json",
       huge("config.json", jp.io.model_config.MAX_CONFIG_BYTES + 1)),
      ("tokenizer over the limit", "tokenizer.json",
       huge("tokenizer.json", jp.io.tokenizer_file.MAX_TOKENIZER_BYTES + 1)),
      ("tokenizer model a list", "tokenizer.json", tok_json(lambda t: t.__setitem__("model", []))),
      ("tokenizer vocab a string", "tokenizer.json",
       tok_json(lambda t: t["model"].__setitem__("vocab", "w0"))),
      ("tokenizer negative id", "tokenizer.json",
       tok_json(lambda t: t["model"]["vocab"].__setitem__("w3", -5))),
      ("tokenizer float id", "tokenizer.json",
       tok_json(lambda t: t["model"]["vocab"].__setitem__("w3", 3.5))),
      ("tokenizer string id", "tokenizer.json",
       tok_json(lambda t: t["model"]["vocab"].__setitem__("w3", "3"))),
      ("tokenizer id beyond the vocabulary", "tokenizer.json",
       tok_json(lambda t: t["model"]["vocab"].__setitem__("extra", 256 + rng.randrange(1000)))),
      ("tokenizer added_tokens an object", "tokenizer.json",
       tok_json(lambda t: t.__setitem__("added_tokens", {"id": 1}))),
      ("tokenizer added token id null", "tokenizer.json",
       tok_json(lambda t: t.__setitem__("added_tokens", [{"id": None, "content": "x"}]))),
      ("tokenizer unknown model type", "tokenizer.json",
       tok_json(lambda t: t["model"].__setitem__("type", "Nope"))),
  ]
  return cases


def test_hostile_configs_and_tokenizers(tmp_path):
  outside = _outside(tmp_path)
  src = tmp_path / "src"
  shutil.copytree(FIX / "llama_tiny", src)
  _tokenizer(256).save(str(src / "tokenizer.json"))
  assert hf_tokenizer(src).get_vocab_size() == 256  # the valid folder loads
  with open_hf(src) as ck:
    assert ck.model_type == "llama"
  cases = _config_cases(0)
  failed = {}
  ad = _adapter(tmp_path, "ad", cfg=dict(ADAPTER_CFG, modules_to_save=None),
                tensors={k: v for k, v in _adapter_tensors().items() if "lora" in k})
  for i, (name, kind, build) in enumerate(cases):
    d = tmp_path / f"m{i}"
    shutil.copytree(src, d, symlinks=True)
    build(d, outside)
    out = tmp_path / f"out{i}"
    entries = {"tokenizer.json": [lambda: hf_tokenizer(d), lambda: load_tokenizer(d)],
               "config.json": [lambda: open_hf(d).__enter__(), lambda: load_tokenizer(d),
                               lambda: merge_checkpoint(d, ad, out)]}[kind]
    for j, fn in enumerate(entries):
      why = _run(fn, (d,), out)
      if why:
        failed[f"{name} (entry {j})"] = why
  tried = sum(2 if k == "tokenizer.json" else 3 for _, k, _ in cases)
  assert tried >= 100
  assert not failed, f"{len(failed)} of {tried} config/tokenizer cases failed: {failed}"


def test_merge_refuses_outside_config(tmp_path):
  """``jaxparams merge`` copies the base's config.json into its output: a symlink outside is
  refused before anything is written (the secret never reaches the output)."""
  outside = _outside(tmp_path)
  for m in "ab":
    shutil.copytree(FIX / "llama_tiny", tmp_path / m)
  (tmp_path / "a" / "config.json").unlink()
  os.symlink(outside["json"], tmp_path / "a" / "config.json")
  recipe = tmp_path / "r.yml"
  recipe.write_text(f"merge_method: linear\nbase_model: {tmp_path / 'a'}\nmodels:\n"
                    f"  - model: {tmp_path / 'a'}\n    parameters: {{weight: 0.5}}\n"
                    f"  - model: {tmp_path / 'b'}\n    parameters: {{weight: 0.5}}\n")
  from jaxparams.merge.stream import merge_checkpoints  # pylint: disable=import-outside-toplevel
  with pytest.raises(ValueError, match=r"config.json.* is a symlink to .*secret.json, outside"
                     ) as e:
    merge_checkpoints(str(recipe), tmp_path / "out", progress=False)
  assert SECRET not in str(e.value) and not (tmp_path / "out").exists()
