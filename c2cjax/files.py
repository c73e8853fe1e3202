"""Small file helpers that never leave a half-written result or an unreadable JSON behind.

* :func:`atomic_write_text` / :func:`atomic_path`: write to a temporary name in the same
  folder, then ``os.replace`` it over the target: a reader (or a killed writer) sees the old
  file or the new one, never a mix.
* :func:`dumps_strict`: JSON that strict readers accept: non-finite floats (NaN, +-inf)
  become ``null`` and ``allow_nan=False`` guards the rest.
* :func:`read_json`: ``json.load`` whose errors name the file (a missing or corrupt
  ``config.json`` / ``projector_config.json`` / fuser ``c2cjax.json`` says which).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pathlib
import uuid
from typing import Any, Iterator

import numpy as np


class CorruptFileError(ValueError):
  """A file exists but cannot be parsed; the message names it."""


def finite_or_none(x: Any) -> Any:
  """``x`` with every non-finite float (also NumPy scalars, nested) replaced by ``None``."""
  if isinstance(x, dict):
    return {k: finite_or_none(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [finite_or_none(v) for v in x]
  if isinstance(x, (float, np.floating)):
    return float(x) if math.isfinite(x) else None
  if isinstance(x, np.integer):
    return int(x)
  if isinstance(x, np.bool_):
    return bool(x)
  return x


def dumps_strict(obj: Any, **kw) -> str:
  """``json.dumps`` that never writes ``NaN``/``Infinity`` (they become ``null``)."""
  return json.dumps(finite_or_none(obj), allow_nan=False, **kw)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[pathlib.Path]:
  """Yields a fresh temporary path next to ``path``; renamed over ``path`` if the block
  succeeds.

  The temporary file is removed if the block raises, so a failed write leaves ``path``
  exactly as it was.
  """
  path = pathlib.Path(path)
  # Same folder (rename is atomic only within a file system), same suffix (writers such as
  # matplotlib pick the format from it); created by the writer, so the umask applies.
  tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}")
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if tmp.exists():
      tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> None:
  """Writes ``text`` to ``path`` atomically (temporary file in the same folder + rename)."""
  with atomic_path(path) as tmp:
    with open(tmp, "w", encoding=encoding) as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
  """The parsed JSON at ``path``; a missing, unreadable or corrupt file names ``path``.

  Raises:
    FileNotFoundError: ``path`` does not exist.
    CorruptFileError: ``path`` is not valid UTF-8 JSON (truncated, overwritten...).
  """
  path = pathlib.Path(path)
  try:
    text = path.read_text(encoding="utf-8")
  except FileNotFoundError:
    raise FileNotFoundError(f"{what} not found: {path}") from None
  except UnicodeDecodeError as e:
    raise CorruptFileError(f"{what} {path} is not UTF-8 text ({e.reason} at byte "
                           f"{e.start}); the file is corrupt") from None
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise CorruptFileError(f"{what} {path} is not valid JSON ({e.msg} at line {e.lineno} "
                           f"column {e.colno}); the file is truncated or corrupt") from None
