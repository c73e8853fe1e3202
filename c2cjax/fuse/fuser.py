"""``Fuser``: one sharer's trained fuser as a value (params, config, layer map)."""

from __future__ import annotations

import dataclasses
from typing import Any

from c2cjax.fuse.apply import init as init_params, prune
from c2cjax.fuse.config import FuserConfig, LayerMap, k_nearest, last_aligned
from c2cjax.fuse.io import load as load_checkpoint


@dataclasses.dataclass(frozen=True, eq=False)
class Fuser:
  """One sharer's trained fuser: params, config and receiver->sharer layer map."""

  params: Any
  config: FuserConfig
  layer_map: LayerMap

  @classmethod
  def init(cls, receiver, sharer, rng, layer_map: str | LayerMap = "last_aligned",
           **overrides) -> "Fuser":
    config = FuserConfig.for_models(receiver.config, sharer.config, **overrides)
    if isinstance(layer_map, str):
      layer_map = layer_map_by_name(layer_map, receiver.config.num_layers,
                                    sharer.config.num_layers)
    return cls(init_params(config, layer_map, rng), config, layer_map)

  @classmethod
  def load(cls, path) -> "Fuser":
    params, config, layer_map, _ = load_checkpoint(path)
    return cls(params, config, layer_map)

  def pruned(self) -> "Fuser":
    """Drops layers whose gates are both closed (inference only)."""
    params, layer_map = prune(self.params, self.layer_map)
    return Fuser(params, self.config, layer_map)


def layer_map_by_name(name: str, num_receiver: int, num_sharer: int) -> LayerMap:
  maps = {"last_aligned": last_aligned, "k_nearest": k_nearest}
  if name not in maps:
    raise ValueError(f"unknown layer map {name!r}; choose from {sorted(maps)}")
  return maps[name](num_receiver, num_sharer)
