"""``Fuser``: one sharer's trained fuser as a value (params, config, layer map, and the
alignment scheme it was trained with); in and out of the released C2C format."""

from __future__ import annotations

import dataclasses
from typing import Any

from c2cjax.fuse.apply import init as init_params, prune
from c2cjax.fuse.config import (FuserConfig, LayerMap, k_nearest, last_aligned,
                                last_aligned_clamped)
from c2cjax.fuse.io import (export_rosetta, import_rosetta, load as load_checkpoint,
                            model_mismatches, refuse_mismatches, resolve_rosetta,
                            save as save_checkpoint)
from c2cjax.models.identity import identity


ALIGNMENTS = ("release", "offsets")  # the schemes of ``c2cjax.sections``


def checkpoint_alignment(meta: dict | None) -> str:
  """The alignment scheme a fuser checkpoint's ``meta`` records; ``"offsets"`` for
  checkpoints written before schemes had names (their ``alignment`` was a token strategy)."""
  value = (meta or {}).get("alignment")
  return value if value in ALIGNMENTS else "offsets"


def checkpoint_models(meta: dict | None, sharer: int = 0) -> dict | None:
  """Sharer ``sharer``'s fuser's part of the models a checkpoint's ``meta`` records:
  ``{"receiver": identity, "sharers": [identity]}``, or None without a record."""
  recorded = (meta or {}).get("models")
  if not recorded:
    return None
  sharers = recorded.get("sharers") or []
  return {"receiver": recorded.get("receiver"),
          "sharers": sharers[sharer:sharer + 1]}


def _one(loaded: tuple, where, how: str) -> tuple:
  """``loaded`` (per-sharer tuples first) if it holds one sharer's fuser, else an error
  naming ``how`` to read several."""
  if len(loaded[1]) != 1:
    raise ValueError(f"{where} holds {len(loaded[1])} fusers (one per sharer); read them "
                     f"with {how}")
  return loaded


@dataclasses.dataclass(frozen=True, eq=False)
class Fuser:
  """One sharer's trained fuser: params, config and receiver->sharer layer map.

  ``alignment`` names the scheme it was trained with (``"release"``: the released C2C's
  sections and the sharer's own chat template; ``"offsets"``: the receiver's text
  re-tokenised by character offsets); ``C2C`` uses it unless told otherwise.
  ``layer_map_name`` is the name the layer map was built from, None when it was given
  as pairs (or stored in a released checkpoint). ``models`` records the receiver and
  sharer it was built for (``{"receiver": identity, "sharers": [identity]}``, see
  ``c2cjax.models.identity``); ``C2C`` refuses other models. None: unknown (a released
  checkpoint, or one written before the record), not checked.
  """

  params: Any
  config: FuserConfig
  layer_map: LayerMap
  alignment: str = "offsets"
  layer_map_name: str | None = None
  models: dict | None = None

  def __post_init__(self):
    if self.alignment not in ALIGNMENTS:
      raise ValueError(f"unknown alignment scheme {self.alignment!r}; choose from {ALIGNMENTS}")

  @classmethod
  def init(cls, receiver, sharer, rng, layer_map: str | LayerMap = "last_aligned", *,
           alignment: str = "offsets", **overrides) -> "Fuser":
    config = FuserConfig.for_models(receiver.config, sharer.config, **overrides)
    name = layer_map if isinstance(layer_map, str) else None
    if isinstance(layer_map, str):
      layer_map = layer_map_by_name(layer_map, receiver.config.num_layers,
                                    sharer.config.num_layers)
    models = {"receiver": identity(receiver, fingerprint=False),
              "sharers": [identity(sharer, fingerprint=False)]}
    return cls(init_params(config, layer_map, rng), config, layer_map, alignment, name, models)

  @classmethod
  def load(cls, path, receiver=None, sharer=None, *, allow_mismatch: bool = False) -> "Fuser":
    """A :meth:`save` (or ``fuse.save``) checkpoint of one sharer's fuser.

    Given a ``receiver`` and/or ``sharer`` (LMs), they are checked against the models the
    checkpoint records: a mismatch is a ValueError naming both, or only a warning with
    ``allow_mismatch`` (research use).
    """
    (params,), (config,), (layer_map,), meta = _one(load_checkpoint(path), path,
                                                    "c2cjax.evaluation.systems.load_fusers")
    fuser = cls(params, config, layer_map, checkpoint_alignment(meta),
                meta.get("layer_map_name"), checkpoint_models(meta))
    refuse_mismatches(fuser.mismatches(receiver, sharer), allow_mismatch)
    return fuser

  def mismatches(self, receiver=None, sharer=None, sharer_id: int = 0) -> list[str]:
    """One line per model that differs from the one this fuser was built for
    (``fuse.model_mismatches``): ``receiver``/``sharer`` are LMs or identity dicts (None:
    not compared); empty for a fuser without a record."""
    return model_mismatches(self.models, receiver, [sharer], [sharer_id])

  def save(self, path, meta: dict | None = None, *, overwrite: bool = False) -> None:
    """``fuse.save`` with the alignment scheme, layer-map name and models in its metadata."""
    meta = {**({"models": self.models} if self.models else {}), **(meta or {}),
            "alignment": self.alignment, "layer_map_name": self.layer_map_name}
    save_checkpoint(path, (self.params,), (self.config,), (self.layer_map,), meta,
                    overwrite=overwrite)

  @classmethod
  def from_rosetta(cls, path_or_hub_id, subfolder: str | None = None, *,
                   param_dtype: str = "float32") -> "Fuser":
    """A fuser in the released C2C format (``projector_{i}.pt/.json`` and
    ``projector_config.json``), marked with the release scheme and its stored layer map.

    Args:
      path_or_hub_id: a local folder, or a hub repo id (e.g. ``nics-efc/C2C_Fuser``) read
        through ``huggingface_hub`` and its cache (offline from a populated cache with
        ``HF_HUB_OFFLINE=1``).
      subfolder: the folder inside it that holds the fuser.
      param_dtype: dtype of the imported params.
    """
    folder = resolve_rosetta(path_or_hub_id, subfolder)
    (params,), (config,), (layer_map,) = _one(
        import_rosetta(folder, param_dtype=param_dtype), folder, "c2cjax.fuse.import_rosetta")
    return cls(params, config, layer_map, "release", None)

  def to_rosetta(self, path, *, overwrite: bool = False) -> None:
    """Writes this fuser in the released C2C format (see ``fuse.export_rosetta``), which
    the released code loads; the format has no field for the alignment scheme or the
    models."""
    export_rosetta(path, self.params, self.config, self.layer_map, overwrite=overwrite)

  def pruned(self) -> "Fuser":
    """Drops layers whose gates are both closed (inference only)."""
    params, layer_map = prune(self.params, self.layer_map)
    return dataclasses.replace(self, params=params, layer_map=layer_map)


def layer_map_by_name(name: str, num_receiver: int, num_sharer: int) -> LayerMap:
  maps = {"last_aligned": last_aligned, "k_nearest": k_nearest,
          "last_aligned_clamped": last_aligned_clamped}
  if name not in maps:
    raise ValueError(f"unknown layer map {name!r}; choose from {sorted(maps)}")
  return maps[name](num_receiver, num_sharer)
