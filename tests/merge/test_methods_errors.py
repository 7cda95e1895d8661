"""Bad input: every error names what is wrong (and the tensor) and lists valid choices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxparams as jp
import jaxparams.merge  # noqa: F401  (jp.merge)
from jaxparams.merge import get_method, merge_trees

A, B, C = jnp.zeros(4), jnp.ones(4), jnp.full(4, 2.0)


def test_unknown_method_lists_valid():
  with pytest.raises(ValueError, match=r"unknown merge method 'tiez'; valid methods: .*"
                                       r"task_arithmetic, ties"):
    get_method("tiez")


def test_unknown_parameter_lists_valid():
  with pytest.raises(ValueError, match=r"unknown model parameter\(s\) \['wieght'\] for tensor "
                                       r"'l.0.w'; valid model parameters: \['density', 'weight'\]"):
    get_method("ties").merge_tensor(A, [B], model_params={"wieght": [1.0]}, name="l.0.w")
  with pytest.raises(ValueError, match=r"unknown global parameter\(s\) \['lamda'\].*'lambda'"):
    get_method("ties").merge_tensor(A, [B], model_params={"weight": 1.0},
                                    global_params={"lamda": 2.0})


def test_missing_required_parameter():
  with pytest.raises(ValueError, match=r"model parameter 'weight' is required"):
    get_method("linear").merge_tensor(None, [A, B])
  with pytest.raises(ValueError, match=r"global parameter 't' is required"):
    get_method("slerp").merge_tensor(A, [B])


def test_wrong_number_of_per_model_values():
  with pytest.raises(ValueError, match=r"'weight' has 3 values.*expected one per model \(2\)"):
    get_method("ties").merge_tensor(A, [B, C], model_params={"weight": [1, 2, 3]})


def test_della_density_epsilon_range():
  with pytest.raises(ValueError, match=r"model 1 has density=0.1 and epsilon=0.15; epsilon must "
                                       r"be chosen such that density \+/- epsilon is in \(0, 1\) "
                                       r"\(tensor 'mlp.w'\)"):
    get_method("della").merge_tensor(A, [B, C], model_params={"weight": 1.0, "density": [0.5, 0.1]},
                                     key=jax.random.key(0), name="mlp.w")
  with pytest.raises(ValueError, match=r"density \+/- epsilon is in \(0, 1\)"):
    jp.merge.della_linear({"w": A}, [{"w": B}], density=0.9, epsilon=0.2, key=jax.random.key(0))


def test_zero_sum_weights_with_normalize():
  with pytest.raises(ValueError, match=r"weights \[1.0, -1.0\] sum to zero with normalize=true "
                                       r"\(tensor 'emb'\)"):
    get_method("linear").merge_tensor(None, [A, B], model_params={"weight": [1.0, -1.0]},
                                      name="emb")
  with pytest.raises(ValueError, match="sum to zero"):
    jp.merge.linear([{"w": A}, {"w": B}], [2.0, -2.0])
  # without normalize it is a valid difference
  out = get_method("linear").merge_tensor(None, [A, B], model_params={"weight": [1.0, -1.0]},
                                          global_params={"normalize": False})
  np.testing.assert_array_equal(np.asarray(out), -np.ones(4))


def test_nan_and_inf_name_the_tensor():
  bad = B.at[2].set(jnp.nan)
  with pytest.raises(ValueError, match=r"tensor 'layers.3.attn.q': model 1 contains NaN or Inf"):
    get_method("task_arithmetic").merge_tensor(A, [B, bad], model_params={"weight": 1.0},
                                               name="layers.3.attn.q")
  with pytest.raises(ValueError, match=r"tensor 'x': base contains NaN or Inf"):
    get_method("slerp").merge_tensor(A.at[0].set(jnp.inf), [B], global_params={"t": 0.5},
                                     name="x")
  # opt-out
  out = get_method("linear").merge_tensor(None, [bad], model_params={"weight": 1.0},
                                          check_finite=False)
  assert np.isnan(np.asarray(out)[2])


def test_shape_mismatch_names_tensor_and_models():
  with pytest.raises(ValueError, match=r"tensor 'lm_head': shape mismatch between inputs: "
                                       r"base \(4,\), model 0 \(4,\), model 1 \(5,\)"):
    get_method("ties").merge_tensor(A, [B, jnp.ones(5)], model_params={"weight": 1.0},
                                    name="lm_head")
  with pytest.raises(ValueError, match=r"tensor 'emb/w': shape \(5,\) in model 1 but \(4,\) in "
                                       r"base"):
    jp.merge.ties({"emb": {"w": A}}, [{"emb": {"w": B}}, {"emb": {"w": jnp.ones(5)}}])
  with pytest.raises(ValueError, match=r"model 0 has different leaves than base: missing "
                                       r"\['v'\]"):
    jp.merge.ties({"w": A, "v": A}, [{"w": B}])


def test_wrong_model_count_and_missing_base():
  with pytest.raises(ValueError, match=r"'slerp' needs exactly 1 non-base model\(s\), got 2"):
    get_method("slerp").merge_tensor(A, [B, C], global_params={"t": 0.5})
  with pytest.raises(ValueError, match=r"'model_stock' needs at least 2 non-base"):
    get_method("model_stock").merge_tensor(A, [B])
  with pytest.raises(ValueError, match=r"'ties' requires a base model \(tensor 'w'\)"):
    get_method("ties").merge_tensor(None, [B], model_params={"weight": 1.0}, name="w")


def test_random_method_needs_key():
  with pytest.raises(ValueError, match=r"'dare_ties' is random: pass key="):
    get_method("dare_ties").merge_tensor(A, [B], model_params={"weight": 1.0, "density": 0.5})
  with pytest.raises(ValueError, match=r"is random: pass key="):
    jp.merge.della({"w": A}, [{"w": B}], density=0.5)


def test_bad_options():
  with pytest.raises(ValueError, match=r"rescale='inverse' needs a random sparsifier"):
    jp.merge.ties({"w": A}, [{"w": B}], rescale="inverse")
  with pytest.raises(ValueError, match=r"trim_scope='model' is only defined for 'ties'"):
    merge_trees("dare_ties", {"w": A}, [{"w": B}], model_params={"weight": 1.0},
                trim_scope="model", key=jax.random.key(0))
  with pytest.raises(ValueError, match=r"multislerp' produced NaN/Inf"):
    v = jnp.array([1.0, 0.0, 0.0, 0.0])
    get_method("multislerp").merge_tensor(None, [v, -v, 2 * v - 2 * v + v * 0],
                                          model_params={"weight": [1.0, 1.0, 1.0]})
