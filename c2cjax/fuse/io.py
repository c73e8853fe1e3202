"""Fuser checkpoints: orbax save/load and import of the released PyTorch format."""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from c2cjax.fuse.config import BRANCHES, FuserConfig, LayerMap, Params
from c2cjax.fuse.apply import init

FORMAT = "c2cjax.fuser/v1"


# --- checkpoints ----------------------------------------------------------------------
def _config_json(config: FuserConfig) -> dict[str, Any]:
  return dataclasses.asdict(config)


def save(path: str | os.PathLike, params, config, layer_map, meta: dict | None = None,
         *, overwrite: bool = False) -> None:
  """Writes params (orbax) and config, layer map and ``meta`` (JSON) in one atomic step.

  ``params``/``config``/``layer_map`` are one fuser or sequences (one per sharer).
  Layout: ``path/params`` (orbax standard) and ``path/fuser/metadata`` (JSON).
  """
  multi = not isinstance(layer_map, LayerMap)
  seq = lambda x: list(x) if multi else [x]
  if multi and not len(params) == len(config) == len(layer_map):
    raise ValueError("params, config and layer_map must have one entry per sharer.")
  info = {"format": FORMAT, "multi": multi,
          "config": [_config_json(c) for c in seq(config)],
          "layer_map": [m.to_json() for m in seq(layer_map)],
          "meta": dict(meta or {})}
  tree = jax.tree.map(jnp.asarray, list(params) if multi else params)
  ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  ckptr.save(os.path.abspath(path), force=overwrite,
             args=ocp.args.Composite(params=ocp.args.StandardSave(tree),
                                     fuser=ocp.args.JsonSave(info)))


def load(path: str | os.PathLike):
  """Reads a :func:`save` checkpoint.

  Returns:
    (params, config, layer_map, meta); tuples per sharer if saved as sequences.
  """
  path = os.path.abspath(path)
  ckptr = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
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
  if info["multi"]:
    return tuple(params), tuple(configs), tuple(maps), info["meta"]
  return params, configs[0], maps[0], info["meta"]


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
    (params, config, layer_map) for one sharer, or tuples of them ordered by source model
    index when there are several.
  """
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError("import_rosetta needs PyTorch to read .pt files: "
                      "pip install torch==2.13.0 (CPU wheel is enough).") from e
  path = os.fspath(path)
  with open(os.path.join(path, "projector_config.json")) as f:
    mapping = json.load(f)
  if list(mapping) != ["0"]:
    raise ValueError(f"Expected receiver model '0' only in projector_config.json, got "
                     f"{list(mapping)}.")
  cache: dict[int, tuple[FuserConfig, Params]] = {}

  def projector(idx: int) -> tuple[FuserConfig, Params]:
    if idx not in cache:
      stem = os.path.join(path, f"projector_{idx}")
      with open(stem + ".json") as f:
        cfg = _config_from_init_args(json.load(f), stem + ".json", param_dtype)
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
  if len(results) == 1:
    return results[0]
  return tuple(zip(*results))
