"""The one reader of edit request files (EasyEdit's form): JSONL, or one JSON list.

:func:`read_request_rows` reads the file through :func:`jaxparams.io.read_text` (size checked
with ``os.stat`` before reading, a symlink leading outside its own folder refused, as for
calibration text, UTF-8) and
returns one :class:`RequestRow` per request, each checked: an object with string ``prompt``,
``subject`` and ``target_new`` (or ROME/MEMIT's ``{"str": ...}``), optional string
``rephrase_prompt`` and ``ground_truth`` (or CounterFact's ``target_true``), each at most
``max_chars`` long. Every error names the file and line (or list position), the field, what was
expected and what was found. Meaning (``{}`` in the prompt, tokenization) is checked by
:mod:`jaxparams.edit.requests`.

Example:
  >>> import os, tempfile
  >>> p = os.path.join(tempfile.mkdtemp(), 'req.jsonl')
  >>> _ = open(p, 'w').write('{"prompt": "{} is in", "subject": "Paris", "target_new": "Rome"}\\n'
  ...                        '{"prompt": 3, "subject": "x", "target_new": "y"}\\n')
  >>> read_request_rows(p)
  Traceback (most recent call last):
  ...
  ValueError: .../req.jsonl:2: field 'prompt' must be a string, found integer 3
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from jaxparams.io import fields as F
from jaxparams.io.text_files import describe, parse_json, read_text

__all__ = ["RequestRow", "read_request_rows", "MAX_REQUESTS_BYTES", "MAX_REQUEST_CHARS"]

#: Size limit of a requests file.
MAX_REQUESTS_BYTES = 64 * 2**20
#: Length limit of one prompt/subject/target (characters): beyond any model's context.
MAX_REQUEST_CHARS = 20_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class RequestRow:
  """One checked request: ``prompt`` (may hold ``{}``), ``subject``, ``target_new``, and
  ``where`` (``file:line``); optional EasyEdit fields ``rephrase_prompt`` (a paraphrase of the
  prompt) and ``ground_truth`` (the old answer; CounterFact's ``target_true`` also read)."""
  prompt: str
  subject: str
  target_new: str
  where: str
  rephrase_prompt: str | None = None
  ground_truth: str | None = None


def _target(where: str, name: str, value: object) -> tuple[str, object]:
  # A target is a string or ROME/MEMIT's {"str": ...}: (the field's name for errors, the value).
  if isinstance(value, dict):
    if "str" not in value:
      raise ValueError(f"{where}: field {name!r} must be a string or {{\"str\": ...}}, "
                       f"found {describe(value)}")
    return f"{name}.str", value["str"]
  return name, value


def read_request_rows(path: str | Path, *, max_bytes: int = MAX_REQUESTS_BYTES,
                      max_chars: int = MAX_REQUEST_CHARS) -> list[RequestRow]:
  """Reads and checks a requests file (JSONL, or a JSON list of objects).

  Raises:
    FileNotFoundError: no such file.
    ValueError: outside its folder, too large, not UTF-8, invalid JSON (file and line named), a
      row that is not an object, a missing or non-string field, a field too long, no rows.
  """
  path = Path(path)
  text = read_text(path, what="requests file", max_bytes=max_bytes,
                   folder=path.absolute().parent)
  if text.lstrip().startswith("["):
    data = parse_json(text, str(path), "requests file")
    rows = [(f"{path}:[{i}]", r) for i, r in enumerate(data)]
  else:
    rows = [(f"{path}:{i}", parse_json(line, f"{path}:{i}", "line"))
            for i, line in enumerate(text.splitlines(), 1) if line.strip()]
  out = []
  for where, row in rows:
    if not isinstance(row, dict):
      raise ValueError(f"{where}: a request must be a JSON object, found {describe(row)}")
    miss = [k for k in ("prompt", "subject", "target_new") if k not in row]
    if miss:
      raise ValueError(f"{where}: request lacks {miss} (needs prompt, subject, target_new)")
    fields = [("prompt", row["prompt"]), ("subject", row["subject"]),
              _target(where, "target_new", row["target_new"])]
    optional = {"rephrase_prompt": None, "ground_truth": None}
    rephrase = row.get("rephrase_prompt")
    if isinstance(rephrase, list) and rephrase:  # EasyEdit also gives a list: the first is used
      rephrase = rephrase[0]
    if rephrase is not None:
      optional["rephrase_prompt"] = F.expect_str(where, "rephrase_prompt", rephrase,
                                                 max_len=max_chars)
    truth = "ground_truth" if "ground_truth" in row else "target_true"
    if row.get(truth) is not None:
      optional["ground_truth"] = F.expect_str(where, *_target(where, truth, row[truth]),
                                              max_len=max_chars)
    vals = [F.expect_str(where, k, v, max_len=max_chars) for k, v in fields]
    out.append(RequestRow(prompt=vals[0], subject=vals[1], target_new=vals[2], where=where,
                          **optional))
  if not out:
    raise ValueError(f"{path}: requests file holds no requests")
  return out
