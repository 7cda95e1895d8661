"""GRACE's codebook rules (EasyEdit GRACE.py): a radius is only grown by a same-label query."""

import jax.numpy as jnp

from jaxparams.edit import grace


def _up(g, x, label, i, eps_init=2.0):
  return grace.update_codebook(g, jnp.array([x, 0.0]), jnp.full(2, float(label)), label=label,
                               edit_id=i, eps_init=eps_init)


def test_radius_grows_never_shrinks_and_conflicts_split():
  g = _up(grace.GraceKernel.wrap(jnp.eye(2), capacity=4), 0.0, 7, 0)    # entry 0, eps 2
  g = _up(g, 0.5, 7, 1)               # same label, inside (0.5 < 2): unchanged (was set to 0.5)
  assert g.n == 1 and float(g.eps[0]) == 2.0
  g = _up(g, 3.0, 7, 2)               # same label, outside but near (3 <= 2 + 2): grown to 3
  assert g.n == 1 and float(g.eps[0]) == 3.0
  g = _up(g, 1.0, 8, 3)               # another label inside: add, both radii split at d/2
  assert g.n == 2
  assert abs(float(g.eps[0]) - (0.5 - 1e-5)) < 1e-6 and float(g.eps[1]) == 0.5
  g = _up(g, 20.0, 7, 4)              # far from everything: a new entry with eps_init
  assert g.n == 3 and float(g.eps[2]) == 2.0


def test_initial_radius_follows_the_key_scale():
  import pytest
  key = jnp.array([3.0, 4.0])                        # ||k|| = 5
  assert grace.GraceParams().radius(key) == pytest.approx(0.3 * 5.0)
  assert grace.GraceParams().radius(100 * key) == pytest.approx(0.3 * 500.0)   # scale-free
  assert grace.GraceParams(eps=1.0, eps_mode="absolute").radius(100 * key) == 1.0  # reference
  with pytest.raises(ValueError, match="eps_mode='norm'; valid: 'relative', 'absolute'"):
    grace.GraceParams(eps_mode="norm")
  with pytest.raises(ValueError, match="must be > 0"):
    grace.GraceParams(eps=0.0)
