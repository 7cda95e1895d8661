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


def _files(folder):
  """{relative path: bytes} of every file under ``folder``."""
  return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*"))
          if f.is_file()}


@pytest.fixture(scope="module")
def edited(model_dir, tmp_path_factory):
  """Model A (the fixture's), A edited by a delta saved beside it, and model B (other weights,
  same shapes, in a folder of the same base name)."""
  from jaxparams.edit import delta as delta_lib
  from jaxparams.models import from_hf
  d = tmp_path_factory.mktemp("edited")
  _, pa, cfg = from_hf(model_dir / "hf")
  path = "layers_1/mlp/down_proj/kernel"
  new, dl = delta_lib.add_delta(pa, {path: jnp.full((64, 32), 0.01, jnp.float32)})
  to_hf(new, cfg, d / "a_edit", copy_from=model_dir / "hf")
  delta_lib.save_delta(dl, d / "a_edit" / "delta")
  pb = jax.jit(Llama(cfg).init)(jax.random.key(1), jnp.zeros((1, 4), jnp.int32))["params"]
  to_hf(pb, cfg, d / "b" / "hf", copy_from=model_dir / "hf")
  return model_dir / "hf", d / "a_edit", d / "b" / "hf"


def _refused(args, capsys, *must):
  rc = cli_main(args)
  err = capsys.readouterr().err
  assert rc == 2, err
  assert err.strip().count("\n") == 0, err        # one line
  for m in must:
    assert m in err, err
  return err


def test_wrong_model_rollback_and_double_apply_refused(edited, tmp_path, capsys):
  a, a_edit, b = edited
  delta = str(a_edit / "delta")
  name = "model.layers.1.mlp.down_proj.weight"
  before = {x: _files(x) for x in (a, a_edit, b)}
  # model A's delta rolled onto model B
  _refused(["edit", str(b), str(tmp_path / "o1"), "--rollback", delta], capsys, str(b), name,
           "is not the one this delta edited", "nothing written")
  # model A's delta applied to model B
  _refused(["edit", str(b), str(tmp_path / "o2"), "--apply", delta], capsys, name,
           "was computed from")
  # applied twice: A already holds the edit
  _refused(["edit", str(a_edit), str(tmp_path / "o3"), "--apply", delta], capsys, name,
           "already holds this delta's edit")
  # rolled back twice: A is not edited
  _refused(["edit", str(a), str(tmp_path / "o4"), "--rollback", delta], capsys, name,
           "already holds the original")
  # in place with --overwrite: refused before anything is touched
  _refused(["edit", str(a_edit), str(a_edit), "--apply", delta, "--overwrite"], capsys, name)
  assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5))
  assert {x: _files(x) for x in (a, a_edit, b)} == before      # bytes identical
  # the right pairs work: apply to A gives A edited, rollback of A edited gives A (bit-exact)
  assert cli_main(["edit", str(a), str(tmp_path / "ap"), "--apply", delta]) == 0
  assert cli_main(["edit", str(a_edit), str(tmp_path / "rb"), "--rollback", delta]) == 0
  ap, ae = jio.load_safetensors(tmp_path / "ap"), jio.load_safetensors(a_edit)
  rb, orig = jio.load_safetensors(tmp_path / "rb"), jio.load_safetensors(a)
  assert all(np.array_equal(ap[k], ae[k]) for k in ae)
  assert all(np.array_equal(rb[k], orig[k]) for k in orig)


def test_altered_delta_refused(edited, tmp_path, capsys):
  from jaxparams.edit import delta as delta_lib
  a, a_edit, _ = edited
  d = delta_lib.load_delta(a_edit / "delta")
  info = json.loads((a_edit / "delta" / "delta.json").read_text())
  fake = delta_lib.Delta(d.updates, {p: v + 1 for p, v in d.originals.items()}, d.meta)
  delta_lib.save_delta(delta_lib.Delta(fake.updates, fake.originals,
                                       {**info["meta"]}), tmp_path / "bad")
  _refused(["edit", str(a), str(tmp_path / "o"), "--apply", str(tmp_path / "bad")], capsys,
           "does not match its recorded fingerprint")


def test_stats_found_by_content_not_folder_name(edited, model_dir, tmp_path):
  from jaxparams.edit import checkpoint
  a, _, b = edited                       # both folders are called 'hf'
  assert a.name == b.name
  sd = tmp_path / "stats"
  got = {}
  for x in (a, b):
    module, params, _, tok = checkpoint._load(x)
    got[x] = lambda text, module=module, params=params, tok=tok, x=x: checkpoint._key_stats(
        module, params, tok, x, [1], sd, text)
  st_a = got[a](model_dir / "stats.txt")                         # computed and saved
  with pytest.raises(FileNotFoundError, match="no key statistics for layer 1 of this model"):
    got[b](None)                                                 # B never gets A's
  st_b = got[b](model_dir / "stats.txt")
  assert not np.allclose(np.asarray(st_a[1].xtx), np.asarray(st_b[1].xtx))
  np.testing.assert_array_equal(np.asarray(got[a](None)[1].xtx), np.asarray(st_a[1].xtx))
  assert len(list(sd.glob("layers_1-*.safetensors"))) == 2


def test_layers_and_requests_errors_named(model_dir, tmp_path, capsys):
  req = tmp_path / "req.json"
  req.write_text('[{"prompt": "{} plays the", "subject": "Jorah Wexgrave",\n "target_new": }]')
  base = ["edit", str(model_dir / "hf"), str(req), str(tmp_path / "o"), "--stats-text",
          str(model_dir / "stats.txt")]
  _refused(base + ["--layers", "1"], capsys, "req.json:2: requests file is not valid JSON")
  _refused(base + ["--layers", "a-b"], capsys, "--layers 'a-b'", "not a layer index")
  req.write_text(json.dumps({"prompt": "{} plays the", "subject": "Jorah Wexgrave",
                             "target_new": "harp"}))
  _refused(base + ["--layers", "0-7"], capsys, "layer 7 does not exist (the model has 2")
  assert not (tmp_path / "o").exists()
