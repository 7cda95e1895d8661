"""One CLI vocabulary (issue 26 items 2, 4, 5): descriptions, flags, parse-time checks, hints."""

import argparse
import subprocess
import sys

import numpy as np
import pytest

import jaxparams as jp
from jaxparams.cli import common
from jaxparams.cli.main import SUBCOMMANDS, SUMMARIES, build_parser, main
from jaxparams.demo.tiny_llama import llama_config, write_llama

CFG = llama_config(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=1,
                   num_attention_heads=4, num_key_value_heads=4)


def _sub(parser: argparse.ArgumentParser, *names: str) -> argparse.ArgumentParser:
  for name in names:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # pylint: disable=protected-access
    parser = action.choices[name]
  return parser


def _help(*names: str) -> str:
  return _sub(build_parser(names[0]), *names).format_help()


@pytest.fixture
def llama(tmp_path, monkeypatch):
  monkeypatch.setenv("JAXPARAMS_COMPILE_CACHE", "none")
  write_llama(tmp_path / "base", cfg=CFG, seed=0)
  return tmp_path / "base"


def test_top_level_help_lists_every_command_without_importing_them(capsys):
  with pytest.raises(SystemExit):
    main(["--help"])
  out = capsys.readouterr().out
  for name in ("lora", "prune", "edit", "dequantize", "flash", "demo", "inspect", "convert",
               "merge", "quantize"):
    assert name in out.split("positional arguments")[0], name  # in the description
    assert f"    {name} " in out, name                         # and in the list, with its line
  # The summary is each sub-command's own help line (one definition); demo/edit are owned
  # by their modules' authors and may reword theirs.
  full = build_parser()
  choices = next(a for a in full._actions if isinstance(a, argparse._SubParsersAction))  # pylint: disable=protected-access
  helps = {a.dest: a.help for a in choices._choices_actions}  # pylint: disable=protected-access
  assert set(helps) == set(SUBCOMMANDS)
  for name in set(SUBCOMMANDS) - {"demo", "edit"}:
    assert helps[name] == SUMMARIES[name], name
  # `jaxparams --help` imports no sub-command module, hence no jax: a fresh interpreter shows it.
  code = ("import sys; from jaxparams.cli.main import main\n"
          "try:\n  main(['--help'])\nexcept SystemExit: pass\n"
          "print(sorted(m for m in ('jax', 'jaxparams.cli.merge', 'jaxparams.quant') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip().splitlines()[-1] == "[]"


def test_did_you_mean_on_commands_methods_and_registries(capsys):
  with pytest.raises(SystemExit):
    main(["mrege", "r.yml", "out"])
  assert "invalid choice: 'mrege' (did you mean 'merge'?)" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    main(["prune", "a", "b", "--method", "magnitud"])
  assert "(did you mean 'magnitude'?)" in capsys.readouterr().err
  with pytest.raises(SystemExit):
    main(["quantize", "a", "b", "--method", "gtpq"])
  assert "(did you mean 'gptq'?)" in capsys.readouterr().err
  assert main(["edit", "--method", "memt", "--list-params"]) == 2  # the library's check
  assert "(did you mean 'memit'?)" in capsys.readouterr().err
  with pytest.raises(ValueError, match=r"unknown pruning method 'wand'; .* \(did you mean 'wanda'\?\)"):
    jp.prune.PRUNERS.get("wand")
  with pytest.raises(ValueError, match=r"\(did you mean 'ties'\?\)"):
    jp.merge.get_method("tiess")


def test_no_doubled_prefix_in_config_errors():
  with pytest.raises(ValueError) as e:
    jp.prune.PRUNERS.get("magnitude").make_config(sparsity=1.5)
  msg = str(e.value)
  assert msg.startswith("transform 'magnitude': ") and "magnitude: magnitude" not in msg
  assert not msg[len("transform 'magnitude': "):].startswith("magnitude:"), msg


def test_bits_checked_at_parse_time(capsys, tmp_path):
  with pytest.raises(SystemExit) as e:
    main(["quantize", str(tmp_path / "missing"), str(tmp_path / "o"), "--bits", "5"])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert "--bits 5 is not supported; choose from 2, 3, 4, 8" in err
  assert not (tmp_path / "o").exists()
  from jaxparams.cli import quantize  # pylint: disable=import-outside-toplevel
  from jaxparams.quant.packing import SUPPORTED_BITS  # pylint: disable=import-outside-toplevel
  assert quantize.BITS == SUPPORTED_BITS


def test_quantize_help_names_families_loaders_and_format_default():
  text = " ".join(_help("quantize").split())
  from jaxparams.models.families import families  # pylint: disable=import-outside-toplevel
  for family in families():
    assert family in text, family
  assert "(BERT, Llama)" not in text
  assert "default jaxparams" in text and "jaxparams dequantize" in text
  assert "optimum" in text and "gptqmodel" in text
  assert "--max-shard-size" in text and "-q, --quiet" in text
  # deprecated spellings: named in the help of the new flag, not listed as flags
  assert "[--no-progress]" not in text and "[--max-shard-bytes" not in text


def test_edit_method_choices_and_lora_extract_help():
  text = " ".join(_help("edit").split())
  for name in ("rome", "memit", "alphaedit"):
    assert name in text.rsplit("--method METHOD", 1)[1][:300], name
  text = " ".join(_help("lora", "extract").split())
  assert "-i REGEX, --include-regex REGEX only decompose" in text
  assert "-e REGEX, --exclude-regex REGEX never decompose" in text


def test_quiet_and_shard_flags_are_one_vocabulary(capsys):
  for names, pos in ((("merge",), ["r.yml", "o"]), (("quantize",), ["a", "b"]),
                     (("prune",), ["a", "b"]), (("lora", "merge"), ["a", "b", "c"]),
                     (("lora", "extract"), ["a", "b", "c", "--rank", "8"])):
    p = _sub(build_parser(names[0]), *names)
    assert p.parse_args(pos).quiet is False, names
    assert p.parse_args(pos + ["-q"]).quiet is True, names
    assert p.parse_args(pos + ["--quiet"]).quiet is True, names
    assert p.parse_args(pos + ["--no-progress"]).quiet is True, names  # deprecated alias
    assert "--no-progress: the deprecated spelling" in " ".join(p.format_help().split())
  p = _sub(build_parser("quantize"), "quantize")
  assert p.parse_args(["a", "b", "--max-shard-bytes", "2e9"]).max_shard_size == "2e9"
  assert p.parse_args(["a", "b"]).max_shard_size == "1GB"


def test_prune_where_is_a_glob_or_re_as_in_inspect(llama, tmp_path, capsys):
  from jaxparams.cli.prune import where_selector  # pylint: disable=import-outside-toplevel
  assert where_selector("*.mlp.*") == "*.mlp.*" and where_selector("re:a.*") == "re:a.*"
  glob, regex, old = tmp_path / "g", tmp_path / "r", tmp_path / "o"
  assert main(["prune", str(llama), str(glob), "--where", "*.mlp.*", "-q"]) == 0
  assert main(["prune", str(llama), str(regex), "--where", "re:.*mlp.*", "-q"]) == 0
  assert main(["prune", str(llama), str(old), "--where", ".*mlp.*", "-q"]) == 0
  err = capsys.readouterr().err
  assert "is read as a regular expression (deprecated)" in err and "'re:.*mlp.*'" in err
  g, r, o = (jp.io.load_safetensors(d) for d in (glob, regex, old))
  src = jp.io.load_safetensors(llama)
  pruned = sorted(n for n in src if not np.array_equal(g[n], src[n]))
  assert pruned and all(".mlp." in n for n in pruned)
  assert len(pruned) == 3  # gate, up, down of the one layer
  for n in src:
    np.testing.assert_array_equal(g[n], r[n])
    np.testing.assert_array_equal(g[n], o[n])
  # inspect reads the same selector the same way
  assert main(["inspect", str(llama), "--where", "*.mlp.*"]) == 0
  assert "total: 3 tensors" in capsys.readouterr().out


def test_progress_bar_reports_every_tensor(llama, tmp_path, monkeypatch, capsys):
  seen = []

  class Recorder:
    def __init__(self, *a, **k):
      pass

    def start(self):
      seen.append("start")

    def stop(self):
      seen.append("stop")

    def add_task(self, description, total=None):
      return 0

    def update(self, task, completed=None, total=None, description=""):
      seen.append((completed, total))

  import rich.progress  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(rich.progress, "Progress", Recorder)
  assert main(["prune", str(llama), str(tmp_path / "p")]) == 0
  n = len(jp.io.load_safetensors(llama))
  assert seen[0] == "start" and seen[-1] == "stop"
  assert seen[-2] == (n, n), seen
  seen.clear()
  assert main(["prune", str(llama), str(tmp_path / "q"), "-q"]) == 0
  assert seen == []
  seen.clear()
  assert main(["-q", "prune", str(llama), str(tmp_path / "r")]) == 0
  assert seen == []
  capsys.readouterr()


def test_progress_bar_closes_on_error():
  events = []
  with pytest.raises(ValueError):
    with common.progress_bar("x") as update:
      update(0, 2, "a")
      events.append("started")
      raise ValueError("boom")
  assert events == ["started"]
