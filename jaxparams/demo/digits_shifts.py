"""Transformation families of 8x8 digit images, each with a strength ``st`` in ``[0, 1]``.

A family ``f(img[8, 8] in [0, 1], st, rng) -> img`` is a distribution shift whose size grows
with ``st`` (``st = 1`` is the full shift a task uses); ``invert``, ``mirror`` and ``vflip``
are all-or-nothing: applied at ``st = 1`` only (identity below). Randomness (rotation sign, noise,
patch position, ...) comes from ``rng`` only, so a family is deterministic under a seed.

Example:
  >>> import numpy as np
  >>> x = np.linspace(0, 1, 128, dtype=np.float32).reshape(2, 64)
  >>> np.allclose(transform_images("invert", x), 1 - x)
  True
  >>> np.array_equal(transform_images("noise", x, seed=3), transform_images("noise", x, seed=3))
  True
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["FAMILIES", "TASK_FAMILIES", "transform_images"]


def _nd():
  from scipy import ndimage  # pylint: disable=import-outside-toplevel
  return ndimage


def _rotate(img, st, rng):
  sign = 1.0 if rng.random() < 0.5 else -1.0
  return _nd().rotate(img, 45.0 * st * sign, reshape=False, order=1, mode="constant")


def _zoom_out(img, st, rng):
  s = 1.0 + st  # sample coordinates spread by s: the digit shrinks to 1/s of its size
  c = 3.5
  return _nd().affine_transform(img, np.eye(2) * s, offset=c - s * c, order=1, mode="constant")


def _low_contrast(img, st, rng):
  return 0.5 + (img - 0.5) * (1.0 - 0.8 * st)


def _noise(img, st, rng):
  return np.clip(img + rng.normal(0.0, 0.25 * st, img.shape), 0.0, 1.0)


def _blur(img, st, rng):
  return _nd().gaussian_filter(img, st) if st > 0 else img


def _downsample(img, st, rng):
  small = img.reshape(4, 2, 4, 2).mean(axis=(1, 3))
  return (1.0 - st) * img + st * np.repeat(np.repeat(small, 2, 0), 2, 1)


def _elastic(img, st, rng):
  nd = _nd()
  dx = nd.gaussian_filter(rng.uniform(-1, 1, img.shape), 1.5) * 3.0 * st
  dy = nd.gaussian_filter(rng.uniform(-1, 1, img.shape), 1.5) * 3.0 * st
  yy, xx = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
  return nd.map_coordinates(img, [yy + dy, xx + dx], order=1, mode="constant")


def _occlude(img, st, rng):
  k = int(round(1 + 3 * st))
  if st <= 0:
    return img
  i, j = rng.integers(0, 9 - k, 2)
  out = img.copy()
  out[i:i + k, j:j + k] = 0.0
  return out


def _salt_pepper(img, st, rng):
  hit = rng.random(img.shape) < 0.2 * st
  return np.where(hit, (rng.random(img.shape) < 0.5).astype(img.dtype), img)


def _thicken(img, st, rng):
  return (1.0 - st) * img + st * _nd().grey_dilation(img, size=(2, 2))


def _shift(img, st, rng):
  return _nd().shift(img, (2.0 * st, 2.0 * st), order=1, mode="constant")


def _invert(img, st, rng):
  return 1.0 - img if st >= 1 else img


def _mirror(img, st, rng):
  return img[:, ::-1] if st >= 1 else img


def _vflip(img, st, rng):
  return img[::-1] if st >= 1 else img


#: Families by name (``f(img[8, 8], st, rng) -> img[8, 8]``); domain ``i + 1`` in pretraining
#: (domain 0 is the unchanged images).
FAMILIES: dict[str, Callable] = {
    "rotate": _rotate, "zoom_out": _zoom_out, "low_contrast": _low_contrast, "noise": _noise,
    "blur": _blur, "downsample": _downsample, "elastic": _elastic, "occlude": _occlude,
    "salt_pepper": _salt_pepper, "thicken": _thicken, "shift": _shift, "invert": _invert,
    "mirror": _mirror, "vflip": _vflip,
}

#: The suite's tasks -> their family (each task is its family at ``st = 1``).
TASK_FAMILIES: dict[str, str] = {
    "rotate": "rotate", "mirror": "mirror", "invert": "invert", "noisy": "noise",
    "blur": "blur", "shift": "shift", "downsample": "downsample", "elastic": "elastic",
}


def transform_images(family: str, x: np.ndarray, *, strength: float | np.ndarray = 1.0,
                     seed: int = 0) -> np.ndarray:
  """Applies ``family`` to images ``x[n, 64]`` in ``[0, 1]`` (deterministic per seed).

  Args:
    family: a name in :data:`FAMILIES`.
    x: flattened 8x8 images.
    strength: ``st`` in ``[0, 1]``, one for all images or one per image.
    seed: seeds the family's randomness.

  Raises:
    ValueError: unknown family, or a strength outside ``[0, 1]``.
  """
  if family not in FAMILIES:
    raise ValueError(f"unknown transformation family {family!r}; valid: {sorted(FAMILIES)}")
  st = np.broadcast_to(np.asarray(strength, np.float64), (len(x),))
  if np.any(st < 0) or np.any(st > 1):
    raise ValueError(f"transform_images({family!r}): strength must lie in [0, 1], got "
                     f"{float(st.min())}..{float(st.max())}")
  rng = np.random.default_rng(seed)
  f = FAMILIES[family]
  imgs = x.reshape(-1, 8, 8).astype(np.float64)
  out = np.stack([f(im, float(s), rng) for im, s in zip(imgs, st)]) if len(x) else imgs
  return np.clip(out, 0.0, 1.0).reshape(len(x), 64).astype(np.float32)
