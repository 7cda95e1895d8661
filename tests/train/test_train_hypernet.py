"""configs/logah.py through `python -m jaxparams.train` (the task='hypernet' branch), shrunk."""

import importlib.util
import json
import pathlib

import jax
import numpy as np

from jaxparams import predict
from jaxparams.train import __main__ as cli
from jaxparams.train import hypernet

REPO = pathlib.Path(__file__).resolve().parents[2]


def _config(arg):
  spec = importlib.util.spec_from_file_location("_cfg_logah", REPO / "configs" / "logah.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config(arg)


def test_full_size_config_is_valid():
  c = _config(None)
  assert hypernet.hypernet_config(c).decoder == "logah"
  assert hypernet.fit_config(c).steps > 100 and len(hypernet.archs(c)) == c.archs.n >= 200
  assert _config("decoder=tiled").hypernet.decoder == "tiled"


def test_runlocal_trains_saves_and_predicts(tmp_path, capsys):
  assert cli.run(_config("runlocal"), str(tmp_path)) == 0
  assert "done: hypernetwork" in capsys.readouterr().out
  lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in lines] == [0, 1, 2] and all(np.isfinite(r["loss"]) for r in lines)
  hn = predict.load(tmp_path / "hypernet")
  assert hn.config.seen  # the training widths were recorded for the shape lookup
  cfg = predict.make_config("llama", depth=2, width=32, heads=4, ffn=64, kv_heads=2)
  tree = predict.params(hn, cfg)  # 4x wider and deeper than the runlocal dataset
  assert tree["layers_1"]["mlp"]["down_proj"]["kernel"].shape == (64, 32)
  assert jax.tree_util.tree_all(jax.tree_util.tree_map(lambda x: bool(np.isfinite(x).all()), tree))
