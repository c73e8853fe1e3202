"""Fusers in and out of the released C2C format: export, import, hub ids, schemes."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from c2cjax import fuse as F
from c2cjax.c2c import Fuser
from c2cjax.models.cache import KVCache

torch = pytest.importorskip("torch")

CFG = F.FuserConfig(sharer_kv_heads=3, sharer_head_dim=2, receiver_kv_heads=2,
                    receiver_head_dim=4, hidden_dim=12, intermediate_dim=20, num_layers=4,
                    dropout=0.0)
LMAP = F.LayerMap((0, 2, 3, 4), (3, 0, 1, 2))  # receiver layer 1 unmapped


def _fuser(seed=0, alignment="offsets"):
  params = F.init(CFG, LMAP, jax.random.key(seed))
  params = dict(params, key_gate_logit=jnp.array([1.0, -1.0, 0.5, 2.0]),
                value_gate_logit=jnp.array([0.3, 1.0, -0.2, 1.0]))
  return Fuser(params, CFG, LMAP, alignment)


def _caches(seed):
  ks = jax.random.split(jax.random.key(seed), 4)
  r = KVCache.init(5, 2, 2, 6, 4, jnp.float32)
  s = KVCache.init(4, 2, 3, 6, 2, jnp.float32)
  r = r.replace(k=jax.random.normal(ks[0], r.k.shape), v=jax.random.normal(ks[1], r.v.shape))
  s = s.replace(k=jax.random.normal(ks[2], s.k.shape), v=jax.random.normal(ks[3], s.v.shape))
  return r, s


def _fused(fuser, r, s):
  mask = jnp.array([[True] * 5 + [False], [False] + [True] * 5])
  return F.fuse_jit((fuser.params,), r, (s,), (fuser.layer_map,), mask, config=(fuser.config,))


def test_export_import_round_trip(tmp_path):
  fuser = _fuser()
  fuser.to_rosetta(tmp_path)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
      ["projector_config.json"] + [f"projector_{i}.{e}" for i in range(4) for e in ("pt", "json")])
  mapping = json.loads((tmp_path / "projector_config.json").read_text())
  assert mapping == {"0": {"1": {"0": [[3, 0]], "2": [[0, 1]], "3": [[1, 2]], "4": [[2, 3]]}}}
  # PyTorch layout: Linear weights [out, in], pair 1's tensors in projector_1.pt.
  sd = torch.load(tmp_path / "projector_1.pt", weights_only=True)
  np.testing.assert_array_equal(sd["value_in.weight"].numpy(),
                                np.asarray(fuser.params["value_in"]["kernel"][1]).T)
  assert sd["key_gate_logit"].item() == -1.0 and sd["key_gate_logit"].shape == ()
  args = json.loads((tmp_path / "projector_2.json").read_text())
  assert args["class"] == "C2CProjector"
  assert args["init_args"]["source_num_heads"] == 3 and args["init_args"]["target_dim"] == 4

  back = Fuser.from_rosetta(tmp_path)
  assert back.alignment == "release" and back.layer_map == LMAP and back.config == CFG
  r, s = _caches(1)
  ref, out = _fused(fuser, r, s), _fused(back, r, s)
  assert not np.allclose(ref.k, r.k)  # the fuser changes the cache
  np.testing.assert_allclose(out.k, ref.k, atol=1e-6, rtol=0)
  np.testing.assert_allclose(out.v, ref.v, atol=1e-6, rtol=0)
  with pytest.raises(FileExistsError, match="overwrite=True"):
    fuser.to_rosetta(tmp_path)
  fuser.to_rosetta(tmp_path, overwrite=True)


def test_bfloat16_export_keeps_dtype(tmp_path):
  fuser = _fuser()
  cfg = F.FuserConfig(**{**CFG.__dict__, "param_dtype": "bfloat16"})
  params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), fuser.params)
  Fuser(params, cfg, LMAP).to_rosetta(tmp_path)
  sd = torch.load(tmp_path / "projector_0.pt", weights_only=True)
  assert sd["key_in.weight"].dtype == torch.bfloat16
  args = json.loads((tmp_path / "projector_0.json").read_text())["init_args"]
  assert args["dtype"] == {"__type__": "torch.dtype", "value": "bfloat16"}
  back = Fuser.from_rosetta(tmp_path, param_dtype="bfloat16")
  np.testing.assert_array_equal(np.asarray(back.params["key_in"]["kernel"], np.float32),
                                np.asarray(params["key_in"]["kernel"], np.float32))


def _hub_cache(root, repo, revision, files):
  """huggingface_hub's cache layout: models--org--name/{refs/main, snapshots/<rev>/...}."""
  folder = root / f"models--{repo.replace('/', '--')}"
  (folder / "refs").mkdir(parents=True)
  (folder / "refs" / "main").write_text(revision)
  snap = folder / "snapshots" / revision
  for rel, src in files.items():
    (snap / rel).parent.mkdir(parents=True, exist_ok=True)
    (snap / rel).write_bytes(src.read_bytes())
  return snap


def test_hub_id_from_offline_cache(tmp_path, monkeypatch):
  from huggingface_hub import constants
  export = tmp_path / "export"
  fuser = _fuser(seed=3)
  fuser.to_rosetta(export)
  cache = tmp_path / "hub"
  sub = "qwen3_0.6b+qwen2.5_0.5b_Fuser"
  _hub_cache(cache, "nics-efc/C2C_Fuser", "a" * 40,
             {f"{sub}/{p.name}": p for p in export.iterdir()})
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))  # read at import time
  monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  back = Fuser.from_rosetta("nics-efc/C2C_Fuser", subfolder=sub)
  assert back.alignment == "release" and back.layer_map == LMAP
  for path in (("key_in", "kernel"), ("value_proj_out", "bias"), ("value_gate_logit",)):
    a, b = fuser.params, back.params
    for k in path:
      a, b = a[k], b[k]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(FileNotFoundError, match="no projector_config.json"):
    Fuser.from_rosetta("nics-efc/C2C_Fuser", subfolder="missing_pair")
  with pytest.raises(Exception):  # not cached and offline: huggingface_hub says so
    Fuser.from_rosetta("nics-efc/Other_Fuser")


def test_not_a_folder_nor_hub_id(tmp_path):
  with pytest.raises(FileNotFoundError, match="neither a directory nor a hub id"):
    Fuser.from_rosetta(str(tmp_path / "a" / "b" / "c"))
  with pytest.raises(FileNotFoundError, match="no projector_config.json"):
    Fuser.from_rosetta(tmp_path)


def test_checkpoint_records_scheme_and_layer_map_name(tmp_path):
  fuser = Fuser(_fuser().params, CFG, LMAP, "release", "last_aligned")
  fuser.save(tmp_path / "new", meta={"step": 3})
  back = Fuser.load(tmp_path / "new")
  assert (back.alignment, back.layer_map_name) == ("release", "last_aligned")
  assert back.layer_map == LMAP
  _, _, _, meta = F.load(tmp_path / "new")
  assert meta == {"step": 3, "alignment": "release", "layer_map_name": "last_aligned"}
  # Written before schemes had names: "alignment" held the token strategy.
  F.save(tmp_path / "old", (fuser.params,), (CFG,), (LMAP,), {"alignment": "first"})
  old = Fuser.load(tmp_path / "old")
  assert (old.alignment, old.layer_map_name) == ("offsets", None)
  assert old.pruned().alignment == "offsets"
  assert Fuser.load(tmp_path / "new").pruned().alignment == "release"


def test_unknown_scheme_is_rejected():
  with pytest.raises(ValueError, match="unknown alignment scheme 'first'"):
    Fuser(_fuser().params, CFG, LMAP, "first")


def test_c2c_takes_the_fusers_scheme():
  from c2cjax.c2c import C2C
  from c2cjax.models.tiny import tiny_lm
  r, s = tiny_lm("qwen3", seed=0), tiny_lm("llama3", seed=1)
  f = Fuser.init(r, s, jax.random.PRNGKey(0), "last_aligned_clamped", hidden_dim=8,
                 intermediate_dim=8, alignment="release")
  assert (f.alignment, f.layer_map_name) == ("release", "last_aligned_clamped")
  offsets = Fuser(f.params, f.config, f.layer_map)
  assert C2C(r, [s], [f]).alignment == "release"
  assert C2C(r, [s], [offsets]).alignment == "offsets"
  assert C2C(r, [s], [f], alignment="offsets").alignment == "offsets"  # told otherwise
  assert C2C(r, [s], [f], alignment="longest").alignment == "release"  # a strategy
  with pytest.raises(ValueError, match="different alignment schemes"):
    C2C(r, [s, s], [f, offsets])
