"""Unit checks of the trainer's pieces: corpus split, batches, optimizer-state transfer."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxparams.train import checkpoint, data, growth


@pytest.fixture(scope="module")
def corpus():
  return data.load_corpus(max_bytes=200_000)


def test_corpus_split_is_disjoint_and_real_python(corpus):
  assert set(corpus.train_files).isdisjoint(corpus.eval_files)
  assert corpus.eval_files and corpus.train.size == 200_000
  assert b"def " in corpus.train.tobytes() and b"import " in corpus.eval.tobytes()
  again = data.load_corpus(max_bytes=200_000)
  np.testing.assert_array_equal(again.train, corpus.train)


def test_batches_are_pure_functions_of_step(corpus):
  b = lambda step, seed=0: data.train_batch(corpus, step=step, batch_size=4, seq_len=16, seed=seed)
  np.testing.assert_array_equal(b(3), b(3))
  assert not np.array_equal(b(3), b(4)) and not np.array_equal(b(3), b(3, seed=1))
  x = b(0)
  assert x.shape == (4, 17) and x.dtype == np.int32 and x.max() < 256
  # Windows are contiguous corpus slices (targets are inputs shifted by one).
  row = x[0].astype(np.uint8).tobytes()
  assert row in corpus.train.tobytes()


def test_transfer_opt_state_pads_old_moments():
  tx = optax.adamw(1e-2)
  old_p = {"w": jnp.arange(6.0).reshape(2, 3), "b": jnp.ones(3)}
  state = tx.init(old_p)
  state = tx.update(old_p, state, old_p)[1]
  new_p = {"w": jnp.ones((5, 3)), "b": jnp.ones(3)}
  new = growth.transfer_opt_state(state, tx.init(new_p), mode="pad")
  mu_old, mu_new = state[0].mu, new[0].mu
  np.testing.assert_array_equal(mu_new["w"][:2], mu_old["w"])
  np.testing.assert_array_equal(mu_new["w"][2:], 0.0)
  np.testing.assert_array_equal(mu_new["b"], mu_old["b"])
  assert int(new[0].count) == 1
  reinit = growth.transfer_opt_state(state, tx.init(new_p), mode="reinit")
  np.testing.assert_array_equal(reinit[0].mu["b"], 0.0)
  assert int(reinit[0].count) == 1
  with pytest.raises(ValueError, match="valid modes"):
    growth.transfer_opt_state(state, tx.init(new_p), mode="zero")
  with pytest.raises(ValueError, match="does not fit"):
    growth.transfer_opt_state(new, tx.init(old_p), mode="pad")


def test_fingerprint_ignores_run_control_only():
  from jaxparams.train import trainer
  a = trainer.default_config()
  b = trainer.default_config()
  b.stop_at_step, b.log_every = 5, 3
  assert checkpoint.fingerprint(a) == checkpoint.fingerprint(b)
  b.optim.lr = 1.0
  assert checkpoint.fingerprint(a) != checkpoint.fingerprint(b)


def test_unknown_hook_is_named():
  with pytest.raises(ValueError, match="valid hooks"):
    growth.get_hook("grow_everything")


@pytest.mark.parametrize("env, expected", [
    ({}, False),
    ({"JAX_NUM_PROCESSES": "1", "SLURM_NTASKS": "1"}, False),
    ({"JAX_NUM_PROCESSES": "4"}, True),
    ({"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234"}, True),
    ({"OMPI_COMM_WORLD_SIZE": "2"}, True),
    ({"TPU_WORKER_HOSTNAMES": "host0,host1"}, True),
    ({"TPU_WORKER_HOSTNAMES": "localhost"}, False),
])
def test_multi_process_detection(monkeypatch, env, expected):
  from jaxparams.train import mesh, trainer
  for var in ("JAX_COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES",
              "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "TPU_WORKER_HOSTNAMES"):
    monkeypatch.delenv(var, raising=False)
  for k, v in env.items():
    monkeypatch.setenv(k, v)
  assert mesh._multi_process_env() is expected  # pylint: disable=protected-access
  if not expected:  # single process: initialisation is skipped
    assert trainer.maybe_initialize_distributed("auto") is False
  with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
    trainer.maybe_initialize_distributed("sometimes")


def test_learning_rate_schedule():
  import ml_collections
  from jaxparams.train import trainer
  o = ml_collections.ConfigDict(dict(lr=2.0, warmup_steps=4, end_lr_ratio=0.1))
  lrs = [trainer.learning_rate(s, o, 20) for s in range(21)]
  np.testing.assert_allclose(lrs[:5], [0.5, 1.0, 1.5, 2.0, 2.0])
  np.testing.assert_allclose(lrs[12], 0.2 + 1.8 * 0.5 * (1 + np.cos(np.pi * 0.5)))
  np.testing.assert_allclose(lrs[20], 0.2)
  assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))


def test_pad_transfer_matches_tokenformer_grow_optimizer_state():
  """Independent check: for TokenFormer, 'pad' equals the scale helper's moment growth."""
  import chex
  import jax
  from jaxparams.scale import tokenformer as tf
  from jaxparams.train import optim
  cfg = tf.TokenFormerConfig(vocab_size=16, d_model=8, n_layers=1, n_heads=2, qkv_tokens=4,
                             out_tokens=4, ffn_tokens=8, max_len=8)
  init = jax.jit(lambda k: tf.TokenFormer(cfg).init(k, jnp.zeros((1, 8), jnp.int32))["params"])
  params = init(jax.random.PRNGKey(0))
  tx = optim.make_optimizer(optim.OptimFeatures(grad_clip=1.0, b1=0.9, b2=0.95, weight_decay=0.1))
  grads = jax.tree.map(lambda p: jnp.full(p.shape, 0.5, p.dtype), params)
  state = jax.jit(lambda g, p: tx.update(g, tx.init(p), p)[1])(grads, params)
  n_new = {"qkv": 2, "out": 4, "ffn": 8}
  grown, _ = tf.grow(params, cfg, n_new, key=jax.random.PRNGKey(1))
  ours = growth.transfer_opt_state(state, jax.jit(tx.init)(grown), mode="pad")
  theirs = tf.grow_optimizer_state(state, cfg, n_new)
  chex.assert_trees_all_equal(ours, theirs)
