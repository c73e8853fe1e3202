"""The C2C fuser alone: it sees caches, a layer map and a token mask, never the models.

- ``config``: :class:`FuserConfig`, :class:`LayerMap` (``last_aligned``,
  ``last_aligned_clamped``, ``k_nearest``), the gate temperature schedule.
- ``module``: the paper's modules (``FuserLayer`` and its FFN blocks) and the gates.
- ``apply``: ``init`` (stacked params of all mapped layers), ``prune`` (one fuser), and
  ``fuse`` -- sharer caches into a receiver cache, pure, for use inside ``jax.jit``.
  Per-sharer arguments of ``fuse``, ``save`` and ``load`` are tuples, also for one sharer.
- ``io``: orbax ``save``/``load``, ``check_models`` (a checkpoint's recorded models
  against the given ones); ``import_rosetta`` / ``export_rosetta`` (the released
  PyTorch format) and ``resolve_rosetta`` (a folder or a hub id).
- ``fuser``: :class:`Fuser`, one sharer's trained fuser as a value, with its alignment
  scheme; ``Fuser.from_rosetta`` / ``to_rosetta``.
"""

from c2cjax.fuse.apply import (check_pairs_at_once, fuse, fuse_jit, init, num_pairs,
                               prune)
from c2cjax.fuse.config import (BRANCHES, FuserConfig, LayerMap, Params, k_nearest,
                                last_aligned, last_aligned_clamped, temperature)
from c2cjax.fuse.fuser import (ALIGNMENTS, Fuser, checkpoint_alignment, checkpoint_models,
                               layer_map_by_name)
from c2cjax.fuse.io import (check_models, export_rosetta, import_rosetta, load,
                            model_mismatches, params_from_state_dict, refuse_mismatches,
                            resolve_rosetta, save, state_dict_from_params)
from c2cjax.fuse.module import (FFNBlock, FFNStack, FuserLayer, gate_openness, hard_gate,
                                sample_gate, soft_gate)

__all__ = ["ALIGNMENTS", "BRANCHES", "FFNBlock", "FFNStack", "Fuser", "FuserConfig",
           "FuserLayer", "LayerMap", "Params", "check_models", "check_pairs_at_once",
           "checkpoint_alignment", "checkpoint_models", "export_rosetta", "fuse", "fuse_jit",
           "gate_openness",
           "hard_gate", "import_rosetta", "init", "k_nearest", "last_aligned",
           "last_aligned_clamped", "layer_map_by_name", "load", "model_mismatches",
           "num_pairs", "params_from_state_dict", "prune", "refuse_mismatches",
           "resolve_rosetta", "sample_gate", "save", "soft_gate", "state_dict_from_params",
           "temperature"]
