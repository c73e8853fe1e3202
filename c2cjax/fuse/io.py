"""Fuser checkpoints: orbax save/load; the released PyTorch format in and out (local
folders or hub ids)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import warnings
from typing import Any, Sequence

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from c2cjax import files
from c2cjax.fuse.config import BRANCHES, FuserConfig, LayerMap, Params, check_per_sharer
from c2cjax.fuse.apply import init, num_pairs

FORMAT = "c2cjax.fuser/v1"


# --- checkpoints ----------------------------------------------------------------------
def _config_json(config: FuserConfig) -> dict[str, Any]:
  return dataclasses.asdict(config)


def _checkpointer() -> ocp.Checkpointer:
  """An orbax checkpointer of this process alone: a fuser is small and written whole (by
  process 0 of a multi-process run) from host arrays, and every process reads it alone."""
  me = jax.process_index()
  mp = ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})
  return ocp.Checkpointer(
      ocp.CompositeCheckpointHandler(composite_options=ocp.CompositeOptions(
          multiprocessing_options=mp)), multiprocessing_options=mp)


def save(path: str | os.PathLike, params, config, layer_map, meta: dict | None = None,
         *, overwrite: bool = False) -> None:
  """Writes params (orbax) and config, layer map and ``meta`` (JSON) in one atomic step.

  Call it from one process (in multi-process runs: with params gathered to the host).

  ``params``/``config``/``layer_map``: sequences, one entry per sharer (also for one).
  Layout: ``path/params`` (orbax standard) and ``path/fuser/metadata`` (JSON); one fuser
  is stored unwrapped, as checkpoints always were.
  """
  check_per_sharer("save", params=params, config=config, layer_map=layer_map)
  if not len(params) == len(config) == len(layer_map) >= 1:
    raise ValueError(f"save: params, config and layer_map must have one entry per sharer; "
                     f"got {len(params)}, {len(config)}, {len(layer_map)}")
  multi = len(params) > 1
  info = {"format": FORMAT, "multi": multi,
          "config": [_config_json(c) for c in config],
          "layer_map": [m.to_json() for m in layer_map],
          "meta": dict(meta or {})}
  tree = jax.tree.map(np.asarray, list(params) if multi else params[0])
  ckptr = _checkpointer()
  ckptr.save(os.path.abspath(path), force=overwrite,
             args=ocp.args.Composite(params=ocp.args.StandardSave(tree),
                                     fuser=ocp.args.JsonSave(info)))


def load(path: str | os.PathLike):
  """Reads a :func:`save` checkpoint.

  Returns:
    (params, config, layer_map, meta): tuples with one entry per sharer (also for one).
  """
  path = os.path.abspath(path)
  check_checkpoint_dir(path)
  ckptr = _checkpointer()
  info = ckptr.restore(path, args=ocp.args.Composite(fuser=ocp.args.JsonRestore()))["fuser"]
  if info.get("format") != FORMAT:
    raise ValueError(f"{path} is not a {FORMAT} checkpoint (format={info.get('format')!r}).")
  configs = [FuserConfig(**c) for c in info["config"]]
  maps = [LayerMap.from_json(m) for m in info["layer_map"]]
  abstract = [jax.eval_shape(lambda c=c, m=m: init(c, m, jax.random.key(0)))
              for c, m in zip(configs, maps)]
  target = abstract if info["multi"] else abstract[0]
  params = ckptr.restore(path, args=ocp.args.Composite(
      params=ocp.args.StandardRestore(target)))["params"]
  params = jax.tree.map(jnp.asarray, params)
  params = tuple(params) if info["multi"] else (params,)
  return params, tuple(configs), tuple(maps), info["meta"]


def check_checkpoint_dir(path: str | os.PathLike) -> None:
  """Raises an error naming the right file when ``path`` is not a :func:`save` checkpoint:
  missing, a training run directory (its fuser is ``<run>/fuser``), a released-format
  folder, or metadata that is not valid JSON."""
  path = os.path.abspath(path)
  meta = os.path.join(path, "fuser", "metadata")
  if os.path.isfile(meta):
    files.read_json(meta, "fuser metadata")  # corrupt JSON names the file
    return
  if os.path.isfile(path):
    raise FileNotFoundError(f"{path} is a file; a fuser checkpoint is a directory (with "
                            "fuser/metadata)")
  if not os.path.isdir(path):
    raise FileNotFoundError(f"fuser checkpoint not found: {path}")
  if os.path.isfile(os.path.join(path, "fuser", "fuser", "metadata")):
    raise FileNotFoundError(f"{path} is a training run directory; the fuser is at "
                            f"{os.path.join(path, 'fuser')}")
  if os.path.isfile(os.path.join(path, "projector_config.json")):
    raise ValueError(f"{path} holds a fuser in the released PyTorch format; read it with "
                     "c2cjax.fuse.import_rosetta")
  raise FileNotFoundError(f"{path} is not a fuser checkpoint (no {meta})")


def model_mismatches(recorded: dict | None, receiver, sharers,
                     sharer_ids: Sequence[int] | None = None) -> list[str]:
  """One line per model that differs from a ``{"receiver": identity, "sharers":
  [identity, ...]}`` record (``c2cjax.train`` writes it as a checkpoint's ``meta["models"]``):
  its architecture, layer count, kv heads, head dim, hidden size or vocabulary, naming both.

  ``receiver``/``sharers`` are LMs or identity dicts; a None model, or a side the record
  lacks, is not compared. ``sharer_ids`` labels the sharers (default 0, 1, ...)."""
  from c2cjax.models import identity as ident_lib
  if not recorded:
    return []
  as_ident = lambda m: m if isinstance(m, dict) else ident_lib.identity(m, fingerprint=False)
  ids = range(len(sharers)) if sharer_ids is None else sharer_ids
  pairs = [("receiver", recorded.get("receiver"), receiver)]
  pairs += [(f"sharer {i}", rec, s)
            for i, rec, s in zip(ids, recorded.get("sharers") or [], sharers)]
  return [f"{role}: trained for {ident_lib.describe(rec)}, given "
          f"{ident_lib.describe(got)} ({'; '.join(diff)})"
          for role, rec, model in pairs if rec and model is not None
          for got in [as_ident(model)]
          for diff in [ident_lib.differences(rec, got)] if diff]


def refuse_mismatches(problems: Sequence[str], allow_mismatch: bool = False, *,
                      stacklevel: int = 3) -> None:
  """:func:`model_mismatches`' lines as one ValueError, or only a warning with
  ``allow_mismatch`` (research use); nothing when there are none."""
  if not problems:
    return
  msg = "the fuser was trained for other models:\n  " + "\n  ".join(problems)
  if not allow_mismatch:
    raise ValueError(msg + "\npass allow_mismatch=True to use it anyway (research use)")
  warnings.warn(msg, stacklevel=stacklevel)


def check_models(meta: dict, receiver, sharers, *, allow_mismatch: bool = False) -> None:
  """Compares the models a checkpoint's ``meta["models"]`` records with ``receiver`` and
  ``sharers`` (see :func:`model_mismatches`): a mismatch is a ValueError naming both, or
  only a warning with ``allow_mismatch``. Checkpoints without the record pass."""
  refuse_mismatches(model_mismatches((meta or {}).get("models"), receiver, sharers),
                    allow_mismatch)


# --- import of the released PyTorch format ----------------------------------------------
def _torch_layout(config: FuserConfig) -> list[tuple[str, tuple[str, ...], tuple[int, ...], bool]]:
  """(torch name, flax path, torch shape, transpose) of every C2CProjector tensor."""
  c = config
  hid, inter = c.hidden_dim, c.intermediate_dim
  out = []
  for p in BRANCHES:
    out.append((f"{p}_gate_logit", (f"{p}_gate_logit",), (), False))
    for name, fan_out, fan_in in ((f"{p}_in", hid, c.sharer_dim + c.receiver_dim),
                                  (f"{p}_scalar_head", c.receiver_kv_heads, hid),
                                  (f"{p}_proj_out", c.receiver_dim, hid)):
      out.append((f"{name}.weight", (name, "kernel"), (fan_out, fan_in), True))
      out.append((f"{name}.bias", (name, "bias"), (fan_out,), False))
    for stack, blocks, width in ((f"{p}_mlp1", 1, inter), (f"{p}_scalar_mlp2", 1, hid),
                                 (f"{p}_proj_mlp2", c.num_layers - 2, inter)):
      for j in range(blocks):
        tn, fp = f"{stack}.blocks.{j}", (stack, f"blocks_{j}")
        out.append((f"{tn}.norm.weight", (*fp, "norm", "scale"), (hid,), False))
        out.append((f"{tn}.w1.weight", (*fp, "w1", "kernel"), (width, hid), True))
        out.append((f"{tn}.w2.weight", (*fp, "w2", "kernel"), (hid, width), True))
  return out


def params_from_state_dict(state_dict: dict[str, np.ndarray], config: FuserConfig,
                           source: str = "state dict") -> Params:
  """One fuser's params (unstacked) from a ``C2CProjector`` state dict of NumPy arrays."""
  layout = _torch_layout(config)
  expected = {name for name, *_ in layout} | {"gate_temperature"}
  unknown = sorted(set(state_dict) - expected)
  if unknown:
    raise ValueError(f"{source}: unexpected tensors {unknown}.")
  params: Params = {}
  for name, path, shape, transpose in layout:
    if name not in state_dict:
      raise ValueError(f"{source}: missing tensor {name!r} (expected shape {shape}).")
    x = np.asarray(state_dict[name])
    if tuple(x.shape) != shape:
      raise ValueError(f"{source}: tensor {name!r} has shape {tuple(x.shape)}, expected "
                       f"{shape} for this config.")
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = jnp.asarray(x.T if transpose else x, config.dtype)
  return params


def _untype(value):
  """Decodes ``{"__type__": ..., "value": ...}`` entries of the released init_args."""
  if isinstance(value, dict) and "__type__" in value:
    return value.get("value")
  return value


def _config_from_init_args(obj: dict, source: str, param_dtype: str) -> FuserConfig:
  if obj.get("class") != "C2CProjector":
    raise ValueError(f"{source}: only C2CProjector is supported, got {obj.get('class')!r}.")
  args = {k: _untype(v) for k, v in obj.get("init_args", {}).items()}
  defaults = FuserConfig(1, 1, 1, 1)
  get = lambda k, d: args.get(k, d) if args.get(k) is not None else d
  return FuserConfig(
      sharer_kv_heads=int(get("source_num_heads", 1)), sharer_head_dim=int(args["source_dim"]),
      receiver_kv_heads=int(get("target_num_heads", 1)),
      receiver_head_dim=int(args["target_dim"]),
      hidden_dim=int(get("hidden_dim", defaults.hidden_dim)),
      intermediate_dim=int(get("intermediate_dim", defaults.intermediate_dim)),
      num_layers=int(get("num_layers", defaults.num_layers)),
      dropout=float(get("dropout", defaults.dropout)),
      initial_temperature=float(get("initial_temperature", defaults.initial_temperature)),
      final_temperature=float(get("final_temperature", defaults.final_temperature)),
      anneal_steps=int(get("anneal_steps", defaults.anneal_steps)),
      param_dtype=param_dtype)


def import_rosetta(path: str | os.PathLike, *, param_dtype: str = "float32"):
  """Imports a released C2C fuser directory (``projector_{i}.pt/.json`` + config).

  ``projector_config.json`` maps target (receiver) model ``"0"`` -> source (sharer) model
  -> receiver layer -> ``[[sharer layer, projector index], ...]``. Only the first pair of
  a receiver layer is used, as the released code does without an aggregator. Needs torch
  (only here); tensors are read with ``torch.load(weights_only=True)``.

  Returns:
    (params, config, layer_map): tuples with one entry per source (sharer) model, ordered
    by its index (also for one).
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("import_rosetta needs PyTorch to read .pt files: "
                      "pip install torch==2.13.0 (CPU wheel is enough).") from e
  path = os.fspath(path)
  mapping = files.read_json(os.path.join(path, "projector_config.json"),
                            "released fuser config")
  if list(mapping) != ["0"]:
    raise ValueError(f"Expected receiver model '0' only in projector_config.json, got "
                     f"{list(mapping)}.")
  cache: dict[int, tuple[FuserConfig, Params]] = {}

  def projector(idx: int) -> tuple[FuserConfig, Params]:
    if idx not in cache:
      stem = os.path.join(path, f"projector_{idx}")
      cfg = _config_from_init_args(files.read_json(stem + ".json", "projector config"),
                                   stem + ".json", param_dtype)
      sd = torch.load(stem + ".pt", map_location="cpu", weights_only=True)
      sd = {k: t.detach().to(torch.float32).numpy() for k, t in sd.items()}
      cache[idx] = cfg, params_from_state_dict(sd, cfg, stem + ".pt")
    return cache[idx]

  results = []
  for src in sorted(mapping["0"], key=int):
    receivers, sharers, stack, cfg = [], [], [], None
    for tgt in sorted(mapping["0"][src], key=int):
      entries = mapping["0"][src][tgt]
      if not entries:
        continue
      if len(entries) > 1:
        warnings.warn(f"Receiver layer {tgt} of source {src} has {len(entries)} sharer "
                      "layers; using the first (as the released code without aggregator).")
      sharer_layer, idx = entries[0]
      pcfg, p = projector(int(idx))
      if cfg is not None and pcfg != cfg:
        raise ValueError(f"projector_{idx} config {pcfg} differs from {cfg} of the same source.")
      cfg = pcfg
      receivers.append(int(tgt))
      sharers.append(int(sharer_layer))
      stack.append(p)
    if cfg is None:
      raise ValueError(f"Source model {src} maps no receiver layer.")
    params = jax.tree.map(lambda *xs: jnp.stack(xs), *stack)
    results.append((params, cfg, LayerMap(tuple(receivers), tuple(sharers))))
  return tuple(zip(*results))


# --- export to the released PyTorch format and hub ids ----------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def state_dict_from_params(params: Params, config: FuserConfig) -> dict[str, np.ndarray]:
  """One fuser's (unstacked) params as a ``C2CProjector`` state dict of float32 arrays.

  The inverse of :func:`params_from_state_dict`; ``gate_temperature`` (a buffer that
  inference does not read) is ``final_temperature``.
  """
  flat = traverse_util.flatten_dict(params)
  out = {"gate_temperature": np.float32(config.final_temperature)}
  for name, path, shape, transpose in _torch_layout(config):
    if path not in flat:
      raise ValueError(f"params lack {'/'.join(path)} (torch tensor {name!r}).")
    x = np.asarray(flat[path], np.float32)
    out[name] = np.ascontiguousarray(x.T if transpose else x).reshape(shape)
  return out


def _init_args(config: FuserConfig) -> dict[str, Any]:
  """``C2CProjector`` constructor arguments in the released JSON encoding."""
  return {"source_dim": config.sharer_head_dim, "target_dim": config.receiver_head_dim,
          "source_num_heads": config.sharer_kv_heads,
          "target_num_heads": config.receiver_kv_heads,
          "intermediate_dim": config.intermediate_dim, "hidden_dim": config.hidden_dim,
          "num_layers": config.num_layers, "dropout": config.dropout,
          "initial_temperature": config.initial_temperature,
          "final_temperature": config.final_temperature,
          "anneal_steps": config.anneal_steps,
          "dtype": {"__type__": "torch.dtype", "value": config.param_dtype}}


def export_rosetta(path: str | os.PathLike, params: Params, config: FuserConfig,
                   layer_map: LayerMap, *, overwrite: bool = False) -> None:
  """Writes one sharer's fuser in the released format, readable by :func:`import_rosetta`
  and by the released code's loader.

  Layout: ``projector_{i}.pt`` (state dict, ``torch.save``) and ``projector_{i}.json``
  (class and init args) for pair ``i`` of ``layer_map``, and ``projector_config.json``
  mapping receiver model ``"0"`` <- sharer model ``"1"``: receiver layer ->
  ``[[sharer layer, i]]``. Tensors are in the config's dtype. Needs torch.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("export_rosetta needs PyTorch to write .pt files: "
                      "pip install torch==2.13.0 (CPU wheel is enough).") from e
  if num_pairs(params) != len(layer_map):
    raise ValueError(f"params hold {num_pairs(params)} fusers but the layer map has "
                     f"{len(layer_map)} pairs.")
  path = os.fspath(path)
  if os.path.exists(os.path.join(path, "projector_config.json")) and not overwrite:
    raise FileExistsError(f"{path} already holds a released fuser; pass overwrite=True.")
  os.makedirs(path, exist_ok=True)
  dtype = getattr(torch, config.param_dtype)
  mapping: dict[str, list[list[int]]] = {}
  for i, (r, s) in enumerate(layer_map.pairs()):
    one = jax.tree.map(lambda x, i=i: np.asarray(x[i], np.float32), params)
    sd = {k: torch.tensor(np.array(v)).to(dtype)
          for k, v in state_dict_from_params(one, config).items()}
    torch.save(sd, os.path.join(path, f"projector_{i}.pt"))
    with open(os.path.join(path, f"projector_{i}.json"), "w") as f:
      json.dump({"class": "C2CProjector", "init_args": _init_args(config)}, f, indent=2)
    mapping[str(r)] = [[s, i]]
  with open(os.path.join(path, "projector_config.json"), "w") as f:
    json.dump({"0": {"1": mapping}}, f)


def resolve_rosetta(path_or_hub_id: str | os.PathLike, subfolder: str | None = None) -> str:
  """The local folder of a released fuser: a directory, or a hub id fetched into the
  ``huggingface_hub`` cache (only ``subfolder``'s files; offline with ``HF_HUB_OFFLINE=1``
  from a populated cache).

  Args:
    path_or_hub_id: a local directory, or a hub repo id such as ``nics-efc/C2C_Fuser``.
    subfolder: folder inside it that holds ``projector_config.json``.
  """
  source = os.fspath(path_or_hub_id)
  if os.path.isdir(source):
    root = source
  elif _HUB_ID.match(source) and not os.path.exists(source):
    from huggingface_hub import snapshot_download  # pylint: disable=import-outside-toplevel
    patterns = [f"{subfolder.strip('/')}/*"] if subfolder else None
    root = snapshot_download(source, allow_patterns=patterns)
  else:
    raise FileNotFoundError(f"{source!r} is neither a directory nor a hub id (org/name).")
  folder = os.path.join(root, subfolder) if subfolder else root
  if not os.path.isfile(os.path.join(folder, "projector_config.json")):
    where = f"{source!r}" + (f" subfolder {subfolder!r}" if subfolder else "")
    raise FileNotFoundError(f"{where} has no projector_config.json (a released C2C fuser "
                            f"folder holds it with projector_{{i}}.pt/.json).")
  return folder
