"""Hub model ids in mergekit recipes, resolved offline from a huggingface_hub cache (issue 9).

The cache is laid out as huggingface_hub writes it (``models--org--name/blobs/<sha256>``,
``snapshots/<commit>/<file>`` relative symlinks, ``refs/main`` without a newline) and checked
with huggingface_hub's own ``scan_cache_dir`` before it is used.
"""

import hashlib
import os
import sys

import numpy as np
import pytest

huggingface_hub = pytest.importorskip("huggingface_hub")

from jaxparams.cli import merge as cli_merge  # pylint: disable=wrong-import-position
from jaxparams.demo.tiny_llama import llama_config, write_llama  # noqa: E402
from jaxparams.io import load_safetensors  # noqa: E402
from jaxparams.merge.recipe import parse_recipe  # noqa: E402

CFG = llama_config(vocab_size=16, hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=4)


def _cache_repo(cache, repo_id, src, commit):
  """Puts the files of folder ``src`` into ``cache`` as huggingface_hub's cache layout."""
  repo = cache / ("models--" + repo_id.replace("/", "--"))
  (repo / "blobs").mkdir(parents=True)
  snap = repo / "snapshots" / commit
  snap.mkdir(parents=True)
  for f in sorted(src.iterdir()):
    data = f.read_bytes()
    etag = hashlib.sha256(data).hexdigest()
    (repo / "blobs" / etag).write_bytes(data)
    os.symlink(os.path.join("..", "..", "blobs", etag), snap / f.name)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text(commit)  # no trailing newline, as huggingface_hub writes


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  d = tmp_path_factory.mktemp("hub")
  write_llama(d / "src-base", cfg=CFG, seed=0)
  write_llama(d / "src-ft", like=d / "src-base", noise=0.1, seed=3)
  c = d / "cache"
  _cache_repo(c, "org/base", d / "src-base", "a" * 40)
  _cache_repo(c, "org/ft", d / "src-ft", "b" * 40)
  info = huggingface_hub.scan_cache_dir(c)  # the layout is huggingface_hub's own
  assert not info.warnings
  assert sorted(r.repo_id for r in info.repos) == ["org/base", "org/ft"]
  assert all(len(r.revisions) == 1 and r.nb_files >= 2 for r in info.repos)
  return d


@pytest.fixture
def offline(cache, monkeypatch):
  monkeypatch.setenv("HF_HUB_CACHE", str(cache / "cache"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setenv("JAXPARAMS_COMPILE_CACHE", "none")
  return cache


def test_hub_ids_merge_offline_from_cache(offline, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "r.yml").write_text(
      "merge_method: task_arithmetic\nbase_model: org/base\nmodels:\n"
      f"  - model: org/ft@{'b' * 40}\n    parameters: {{weight: 0.5}}\ndtype: float32\n")
  assert cli_merge.main(["r.yml", "out", "--quiet"]) == 0
  got = load_safetensors(tmp_path / "out")
  base, ft = load_safetensors(offline / "src-base"), load_safetensors(offline / "src-ft")
  assert sorted(got) == sorted(base)
  for k in base:
    np.testing.assert_allclose(got[k], base[k] + 0.5 * (ft[k] - base[k]), atol=1e-6)
  snap = offline / "cache" / "models--org--base" / "snapshots" / ("a" * 40)
  assert parse_recipe({"merge_method": "linear", "models": ["org/base"]}).resolve_model(
      "org/base") == snap
  assert (tmp_path / "out" / "config.json").is_file()


def test_missing_hub_model_names_id_cache_and_command(offline, tmp_path, capsys):
  r = parse_recipe({"merge_method": "linear", "models": ["org/missing"]}, source="r.yml")
  cache = offline / "cache"
  with pytest.raises(FileNotFoundError) as e:
    r.resolve_model("org/missing")
  msg = str(e.value)
  assert msg.startswith(f"r.yml: model 'org/missing' not found locally or in the Hugging Face "
                        f"cache at {cache} (HF_HUB_OFFLINE is set); download it with "
                        "`hf download org/missing`")
  assert "or give a local path" in msg
  with pytest.raises(FileNotFoundError, match=r"model 'org/base@main2' not found locally"):
    r.resolve_model("org/base@main2")  # an unknown revision is not replaced by another one
  (tmp_path / "r.yml").write_text("merge_method: linear\nmodels: [org/ft, org/nope]\n")
  assert cli_merge.main([str(tmp_path / "r.yml"), str(tmp_path / "o"), "--quiet"]) == 2
  assert "model 'org/nope' not found locally or in the Hugging Face cache" in (
      capsys.readouterr().err)
  assert not (tmp_path / "o").exists()


def test_hub_id_without_huggingface_hub_says_how_to_install(offline, monkeypatch):
  monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
  r = parse_recipe({"merge_method": "linear", "models": ["org/base"]})
  with pytest.raises(FileNotFoundError, match=r"pip install 'jaxparams\[hub\]'"):
    r.resolve_model("org/base")
