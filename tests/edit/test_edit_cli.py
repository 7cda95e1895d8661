"""``jaxparams edit``: bad requests named by line; edit + rollback round trip on disk."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxparams import io as jio
from jaxparams.cli.main import main as cli_main
from jaxparams.edit import facts, facts_lm
from jaxparams.models import Llama, LlamaConfig, to_hf


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
  d = tmp_path_factory.mktemp("m")
  fs = facts.load_facts_set()
  facts_lm.prepare_data(d / "data")
  cfg = LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4)
  p = jax.jit(Llama(cfg).init)(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
  to_hf(p, cfg, d / "hf", copy_from=d / "data")
  (d / "stats.txt").write_text("\n".join(facts.sentence(pr, f.subject, f.object)
                                         for f in fs.facts[:30] for pr in fs.relations[f.relation]))
  return d


def test_bad_request_named(model_dir, tmp_path, capsys):
  req = tmp_path / "req.jsonl"
  req.write_text(json.dumps({"prompt": "{} plays the", "subject": "Jorah Wexgrave",
                             "target_new": "harp"}) + "\n" +
                 json.dumps({"prompt": "{} plays the", "subject": "Jorah Wexgrave",
                             "target_new": "kazoo"}) + "\n")
  rc = cli_main(["edit", str(model_dir / "hf"), str(req), str(tmp_path / "out"), "--method",
                 "memit", "--layers", "1", "--stats-text", str(model_dir / "stats.txt")])
  err = capsys.readouterr().err
  assert rc == 2 and "req.jsonl:2" in err and "kazoo" in err
  assert not (tmp_path / "out").exists()


def test_unknown_method_and_missing_stats(model_dir, tmp_path, capsys):
  req = tmp_path / "req.jsonl"
  req.write_text(json.dumps({"prompt": "{} plays the", "subject": "Jorah Wexgrave",
                             "target_new": "harp"}) + "\n")
  assert cli_main(["edit", str(model_dir / "hf"), str(req), str(tmp_path / "o"), "--method",
                   "mend", "--layers", "1"]) == 2
  assert "valid: rome, memit, alphaedit" in capsys.readouterr().err
  assert cli_main(["edit", str(model_dir / "hf"), str(req), str(tmp_path / "o"), "--layers",
                   "1"]) == 2
  assert "--stats" in capsys.readouterr().err


@pytest.mark.slow
def test_edit_then_rollback_bit_exact(model_dir, tmp_path):
  req = tmp_path / "req.jsonl"
  req.write_text(json.dumps({"prompt": "{} plays the", "subject": "Jorah Wexgrave",
                             "target_new": "harp"}) + "\n")
  out, back = tmp_path / "out", tmp_path / "back"
  assert cli_main(["edit", str(model_dir / "hf"), str(req), str(out), "--method", "rome",
                   "--layers", "1", "--stats-text", str(model_dir / "stats.txt")]) == 0
  assert cli_main(["edit", str(out), str(back), "--rollback", str(out / "delta")]) == 0
  a, b, c = (jio.load_safetensors(x) for x in (model_dir / "hf", back, out))
  assert all(np.array_equal(a[k], b[k]) for k in a)
  assert [k for k in a if not np.array_equal(a[k], c[k])] == ["model.layers.1.mlp.down_proj.weight"]
