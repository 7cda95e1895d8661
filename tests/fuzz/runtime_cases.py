"""Seeded generators of hostile inputs for the runtime reliability tests (issue 25, item 4).

Plain functions of a ``numpy.random.Generator`` so every case is reproducible from its seed.
"""

from __future__ import annotations

import numpy as np


def alias_bomb(rng: np.random.Generator) -> str:
  """A "billion laughs" YAML: ``levels`` anchors, each a list of ``fanout`` aliases of the last.

  The file is a few hundred bytes; fully expanded it holds ``fanout ** levels`` (10**7 to
  10**12) values. Sometimes hidden under a recipe key, sometimes with merge keys (``<<``).
  """
  levels, fanout = int(rng.integers(7, 13)), int(rng.integers(6, 11))
  names = [f"l{i}" for i in range(levels)]
  lines = [f"{names[0]}: &{names[0]} [" + ", ".join(["lol"] * fanout) + "]"]
  for prev, cur in zip(names, names[1:]):
    lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * fanout) + "]")
  style = int(rng.integers(0, 3))
  if style == 0:
    return "\n".join(lines) + "\n"
  if style == 1:  # inside a recipe's parameters
    body = "\n".join("  " + ln for ln in lines)
    return ("merge_method: linear\nmodels:\n  - model: a\n    parameters:\n      weight: 1.0\n"
            f"parameters:\n{body}\n")
  # merge keys: each mapping merges the previous one several times over
  out = ["m0: &m0 {" + ", ".join(f"k{j}: lol" for j in range(fanout)) + "}"]
  for i in range(1, levels):
    out.append(f"m{i}: &m{i} {{" + ", ".join(f"k{j}: *m{i-1}" for j in range(fanout)) + "}")
  return "\n".join(out) + "\n"


def recursive_alias(rng: np.random.Generator) -> str:
  """A self-referencing alias (a cycle)."""
  return ["a: &a [1, *a]\n", "a: &a {b: *a}\n", "x: &x [[[*x]]]\n"][int(rng.integers(0, 3))]


def deep_nesting(rng: np.random.Generator) -> str:
  n = int(rng.integers(40, 5000))
  return "merge_method: linear\nparameters: {w: " + "[" * n + "1" + "]" * n + "}\n"


#: A recipe value that is the wrong type for the parameter, with the parameter it goes to.
def wrong_value(rng: np.random.Generator) -> tuple[str, str, object]:
  """(scope, name, value): a value mergekit's validators would refuse for that parameter."""
  bool_words = ["maybe", "perhaps", "2", "truee", "yes please", "", "null-ish", "[]"]
  choice = int(rng.integers(0, 6))
  if choice == 0:
    return "global", "normalize", str(rng.choice(bool_words))
  if choice == 1:
    return "global", "int8_mask", float(rng.uniform(0.1, 0.9))
  if choice == 2:
    return "model", "weight", bool(rng.integers(0, 2))
  if choice == 3:
    return "model", "density", str(rng.choice(["dense", "half", "x1"]))
  if choice == 4:
    return "global", "lambda", bool(rng.integers(0, 2))
  return "model", "weight", "w" * int(rng.integers(1, 5))


def huge_number(rng: np.random.Generator) -> str:
  """A YAML number of 300 to 5,000 digits (an integer, or a float that overflows)."""
  digits = int(rng.integers(300, 5000))
  s = "".join(str(d) for d in rng.integers(0, 10, digits))
  s = "9" + s[1:]
  return s if rng.integers(0, 2) else s[:-2] + ".5"


def strict_type_case(rng: np.random.Generator) -> str:
  """YAML with values a recipe never holds: dates, binary, sets, omaps, complex keys, duplicates."""
  cases = [
      "merge_method: linear\nwhen: 2024-01-01\n",
      "merge_method: linear\nblob: !!binary aGVsbG8=\n",
      "merge_method: linear\nmodels: !!set {a, b}\n",
      "merge_method: linear\nmodels: !!omap [{a: 1}]\n",
      "merge_method: linear\n? [a, b]\n: 1\n",
      "merge_method: linear\nmerge_method: ties\n",
      "merge_method: linear\n1: one\n",
      "merge_method: !!python/name:os.system linear\n",
      "merge_method: linear\nparameters: {weight: .inf}\n",
      "merge_method: linear\nparameters: {weight: .nan}\n",
  ]
  return cases[int(rng.integers(0, len(cases)))]
