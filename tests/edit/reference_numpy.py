"""Independent numpy (float64) transcription of the reference repositories' update code.

Torch layout: ``W_t [d_v, d_k]`` with ``v = W_t k``. Lines follow
kmeng01/rome ``rome/compute_u.py`` + ``compute_v.py`` + ``rome_main.py``,
kmeng01/memit ``memit/memit_main.py`` and jianghoucheng/AlphaEdit ``AlphaEdit/AlphaEdit_main.py``
+ ``experiments/evaluate.py:get_project``; the results are returned in the torch layout.
"""

import numpy as np


def rome_update(w_t, cov, k_avg, k_star, v_star):
  u = np.linalg.inv(cov) @ k_avg            # get_inv_cov(...) @ u
  u = u / np.linalg.norm(u)                 # u / u.norm()
  cur_output = w_t @ k_star                 # original output of the MLP at the edit prompt
  right = (v_star - cur_output) / np.dot(k_star, u)
  upd = u[:, None] @ right[None, :]         # left.unsqueeze(1) @ right.unsqueeze(0): [d_k, d_v]
  return upd.T                              # upd_matrix_match_shape -> W_t's [d_v, d_k]


def memit_update(keys, targets, cov, lam, n_layers_left):
  adj_k = np.linalg.solve(lam * cov + keys @ keys.T, keys)
  resid = targets / n_layers_left
  return resid @ adj_k.T                    # [d_v, d_k]


def get_project(cov, threshold):
  u, s, _ = np.linalg.svd(cov, full_matrices=False)
  idx = np.nonzero(s < threshold)[0]
  return u[:, idx] @ u[:, idx].T


def alphaedit_update(keys, resid, p, cache_c, l2):
  a = p @ (keys @ keys.T + cache_c) + l2 * np.eye(keys.shape[0])
  upd = np.linalg.solve(a, p @ keys @ resid.T)   # [d_k, d_v]
  return upd.T                                   # W_t's [d_v, d_k]
