"""The neuron matrix (swap-on-delete) and the window against a dict-of-rows model."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxparams.flash import NeuronMatrix, Window


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.lists(st.integers(0, 29), max_size=8)), max_size=25))
def test_matrix_matches_a_dict_of_rows(ops):
  m = NeuronMatrix(capacity=12, num_neurons=30, row=2, dtype=np.float32)
  ref: dict[int, np.ndarray] = {}
  buf_id = id(m.rows)
  for is_add, ids in ops:
    ids = np.unique(ids)
    if is_add:
      ids = np.array([i for i in ids if i not in ref][:m.capacity - m.n], np.int64)
      rows = m.add(ids)
      vals = np.stack([ids, -ids], 1).astype(np.float32) if ids.size else np.zeros((0, 2))
      m.rows[rows] = vals
      ref.update({int(i): v for i, v in zip(ids, vals)})
    else:
      ids = np.array([i for i in ids if i in ref], np.int64)
      m.remove(ids)
      for i in ids:
        del ref[int(i)]
    assert m.n == len(ref) and sorted(m.loaded().tolist()) == sorted(ref)
    for r, i in enumerate(m.loaded()):
      np.testing.assert_array_equal(m.rows[r], ref[int(i)])
      assert m.pos[i] == r
  assert id(m.rows) == buf_id  # never reallocated


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(st.integers(0, 29), max_size=8),
                          st.lists(st.integers(0, 29), max_size=8)), max_size=25))
def test_replace_matches_a_dict_of_rows(ops):
  """replace(old, new): the rows kept hold their values, the new ones land where it says."""
  m = NeuronMatrix(capacity=12, num_neurons=30, row=2, dtype=np.float32)
  ref: dict[int, np.ndarray] = {}
  for old, new in ops:
    old = np.array([i for i in np.unique(old) if i in ref], np.int64)
    left = m.capacity - m.n + old.size
    new = np.array([i for i in np.unique(new) if i not in ref][:left], np.int64)
    rows = m.replace(old, new)
    for i in old:
      del ref[int(i)]
    vals = np.stack([new, -new], 1).astype(np.float32) if new.size else np.zeros((0, 2))
    m.rows[rows] = vals
    ref.update({int(i): v for i, v in zip(new, vals)})
    assert m.n == len(ref) and sorted(m.loaded().tolist()) == sorted(ref)
    for r, i in enumerate(m.loaded()):
      np.testing.assert_array_equal(m.rows[r], ref[int(i)])
      assert m.pos[i] == r
    assert (m.ids[m.n:] == -1).all() and (m.pos >= 0).sum() == m.n


def test_replace_refuses_bad_input():
  m = NeuronMatrix(capacity=3, num_neurons=6, row=1, dtype=np.float32)
  m.add(np.array([0, 1]))
  with pytest.raises(ValueError, match=r"\[4\] are not loaded"):
    m.replace(np.array([4]), np.array([2]))
  with pytest.raises(ValueError, match=r"found \[1\] loaded"):
    m.replace(np.array([0]), np.array([1]))
  with pytest.raises(ValueError, match="exceed the capacity 3"):
    m.replace(np.array([0]), np.array([2, 3, 4]))


def test_matrix_refuses_overflow_and_unknown():
  m = NeuronMatrix(capacity=2, num_neurons=5, row=1, dtype=np.float32)
  m.add(np.array([0, 1]))
  with pytest.raises(ValueError, match="exceed the capacity 2"):
    m.add(np.array([3]))
  with pytest.raises(ValueError, match=r"\[4\] are not loaded"):
    m.remove(np.array([4]))


def test_window_keeps_the_last_k_tokens():
  w = Window(6, k=2)
  assert w.update(0, np.array([0, 1])).nonzero()[0].tolist() == [0, 1]
  assert w.update(1, np.array([2])).nonzero()[0].tolist() == [0, 1, 2]
  assert w.update(2, np.array([3])).nonzero()[0].tolist() == [2, 3]
