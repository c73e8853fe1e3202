"""Effective rank of the receiver's keys and values per layer, before and after fusion (the
paper's "information density" analysis: C2C raises the effective rank of the fused cache).

Effective rank (Roy & Vetterli 2007) of a matrix ``X [N tokens, D]``: ``exp(H(p))`` with ``p``
the singular values normalised to sum 1; it lies in [1, min(N, D)]. Tokens of all texts are
stacked per layer (real slots only).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from c2cjax import fuse as fuse_lib
from c2cjax.analysis import caches
from c2cjax.models.lm import LM


def effective_rank(x: np.ndarray) -> float:
  """``exp(entropy(singular values / their sum))`` of a 2-D matrix."""
  s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
  s = s[s > 0]
  if not len(s):
    return 0.0
  p = s / s.sum()
  return float(np.exp(-(p * np.log(p)).sum()))


def fused_vectors(receiver: LM, sharer: LM, params, config: fuse_lib.FuserConfig,
                  layer_map: fuse_lib.LayerMap, texts: Sequence[str]):
  """Receiver keys/values per layer ``[L, N, K*H]`` before and after fusion (all slots of the
  prompt fused, hard gates), stacked over the texts."""
  before, after = {"k": [], "v": []}, {"k": [], "v": []}
  for t in texts:
    rids, sids = caches.aligned_ids(receiver, sharer, t)
    width = caches.width_for(len(rids))
    rc = caches.prefill(receiver, rids, width)
    sc = caches.prefill(sharer, sids, width)
    fused = fuse_lib.fuse((params,), rc, (sc,), (layer_map,), rc.valid_mask(),
                          config=(config,))
    for store, cache in ((before, rc), (after, fused)):
      k, v = caches.token_vectors(cache)
      store["k"].append(k)
      store["v"].append(v)
  cat = lambda d: {kv: np.concatenate(x, axis=1) for kv, x in d.items()}
  return cat(before), cat(after)


def run(receiver: LM, sharer: LM, params, config, layer_map, texts: Sequence[str]) -> dict:
  """Per receiver layer: effective rank of keys and values before / after fusion."""
  before, after = fused_vectors(receiver, sharer, params, config, layer_map, texts)
  fused_layers = set(layer_map.receiver)
  layers = []
  for i in range(receiver.config.num_layers):
    row = {"layer": i, "fused": i in fused_layers}
    for kv in ("k", "v"):
      row[f"{kv}_before"] = effective_rank(before[kv][i])
      row[f"{kv}_after"] = effective_rank(after[kv][i])
    layers.append(row)
  mean = lambda key: float(np.mean([r[key] for r in layers if r["fused"]] or [0.0]))
  return {"tokens": int(before["k"].shape[1]), "texts": len(texts), "layers": layers,
          "mean_over_fused_layers": {k: mean(k) for k in
                                     ("k_before", "k_after", "v_before", "v_after")}}
