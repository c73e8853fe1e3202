"""The C2C fuser alone: it sees caches, a layer map and a token mask, never the models.

- ``config``: :class:`FuserConfig`, :class:`LayerMap` (``last_aligned``, ``k_nearest``),
  the gate temperature schedule.
- ``module``: the paper's modules (``FuserLayer`` and its FFN blocks) and the gates.
- ``apply``: ``init`` (stacked params of all mapped layers), ``prune``, and ``fuse`` --
  sharer caches into a receiver cache, pure, for use inside ``jax.jit``.
- ``io``: orbax ``save``/``load`` and ``import_rosetta`` (the released PyTorch format).
- ``fuser``: :class:`Fuser`, one sharer's trained fuser as a value.
"""

from c2cjax.fuse.apply import fuse, fuse_jit, init, num_pairs, prune
from c2cjax.fuse.config import (BRANCHES, FuserConfig, LayerMap, Params, k_nearest,
                                last_aligned, temperature)
from c2cjax.fuse.fuser import Fuser, layer_map_by_name
from c2cjax.fuse.io import import_rosetta, load, params_from_state_dict, save
from c2cjax.fuse.module import (FFNBlock, FFNStack, FuserLayer, gate_openness, hard_gate,
                                sample_gate, soft_gate)

__all__ = ["BRANCHES", "FFNBlock", "FFNStack", "Fuser", "FuserConfig", "FuserLayer", "LayerMap",
           "Params", "fuse", "fuse_jit", "gate_openness", "hard_gate", "import_rosetta", "init",
           "k_nearest", "last_aligned", "layer_map_by_name", "load", "num_pairs",
           "params_from_state_dict", "prune", "sample_gate", "save", "soft_gate",
           "temperature"]
