"""Tests of c2cjax.fuse against an independent float64 NumPy C2C fuser."""

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from c2cjax import fuse as F
from c2cjax.models.cache import KVCache

B, T = 2, 5
LR, KR, HR = 5, 2, 4  # receiver layers, kv heads, head dim
CFG = F.FuserConfig(sharer_kv_heads=3, sharer_head_dim=2, receiver_kv_heads=KR,
                    receiver_head_dim=HR, hidden_dim=12, intermediate_dim=20, num_layers=4,
                    dropout=0.0)
CFG2 = F.FuserConfig(sharer_kv_heads=1, sharer_head_dim=6, receiver_kv_heads=KR,
                     receiver_head_dim=HR, hidden_dim=10, intermediate_dim=7, num_layers=3,
                     dropout=0.0)


# --- independent NumPy reference (PyTorch state-dict layout: weights [out, in]) ----------
_erf = np.vectorize(math.erf)


def np_block(x, sd, name):
  h = x / np.sqrt(np.mean(x * x, -1, keepdims=True) + 1e-6) * sd[f"{name}.norm.weight"]
  h = h @ sd[f"{name}.w1.weight"].T
  h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
  return x + h @ sd[f"{name}.w2.weight"].T


def np_linear(x, sd, name):
  return x @ sd[f"{name}.weight"].T + sd[f"{name}.bias"]


def np_branch(sd, prefix, s, r, gate, num_layers):
  """s [B, Ks, T, Ds], r [B, Kr, T, Dr]; gate scalar or [B, T, Kr] -> [B, Kr, T, Dr]."""
  b, kr, t, dr = r.shape
  s_flat = s.transpose(0, 2, 1, 3).reshape(b, t, -1)
  r_flat = r.transpose(0, 2, 1, 3).reshape(b, t, -1)
  h = np_linear(np.concatenate([s_flat, r_flat], -1), sd, f"{prefix}_in")
  h = np_block(h, sd, f"{prefix}_mlp1.blocks.0")
  x = h
  for j in range(num_layers - 2):
    x = np_block(x, sd, f"{prefix}_proj_mlp2.blocks.{j}")
  proj = np_linear(x, sd, f"{prefix}_proj_out").reshape(b, t, kr, dr)
  w = np_linear(np_block(h, sd, f"{prefix}_scalar_mlp2.blocks.0"), sd, f"{prefix}_scalar_head")
  scale = np.asarray(gate) * (1.0 / (1.0 + np.exp(-w)))  # [B, T, Kr]
  out = r_flat.reshape(b, t, kr, dr) + scale[..., None] * proj
  return out.transpose(0, 2, 1, 3)


def np_fuse_layer(sd, sk, sv, rk, rv, num_layers, noise=None, tau=None):
  """Inference (hard gates) unless noise=(gk, gv) [B, T, Kr] and tau are given."""
  gates = []
  for i, p in enumerate(("key", "value")):
    logit = float(sd[f"{p}_gate_logit"])
    if noise is None:
      gates.append(float(logit > 0))
    else:
      gates.append(1.0 / (1.0 + np.exp(-(logit + noise[i]) / tau)))
  return (np_branch(sd, "key", sk, rk, gates[0], num_layers),
          np_branch(sd, "value", sv, rv, gates[1], num_layers))


def np_fuse(sds, receiver, sharers, maps, mask, num_layers, mode):
  """Whole-cache reference; sds[i][p] is the state dict of pair p of sharer i."""
  k0, v0 = (np.asarray(x, np.float64) for x in (receiver.k, receiver.v))
  k, v = k0.copy(), v0.copy()
  m = np.asarray(mask)[:, None, :, None]
  for sd, sh, lm, nl in zip(sds, sharers, maps, num_layers):
    base_k, base_v = (k0, v0) if mode == "parallel" else (k.copy(), v.copy())
    for p, (rl, sl) in enumerate(zip(lm.receiver, lm.sharer)):
      fk, fv = np_fuse_layer(sd[p], np.asarray(sh.k[sl], np.float64),
                             np.asarray(sh.v[sl], np.float64), base_k[rl], base_v[rl], nl)
      k[rl] += np.where(m, fk - base_k[rl], 0.0)
      v[rl] += np.where(m, fv - base_v[rl], 0.0)
  return k, v


def to_state_dict(params, p):
  """Pair p of stacked flax params -> float64 PyTorch-layout state dict (test-side map)."""
  sd = {}
  for name, node in params.items():
    if name.endswith("gate_logit"):
      sd[name] = np.asarray(node[p], np.float64)
    elif "mlp" in name:
      for blk, d in node.items():
        tn = f"{name}.blocks.{int(blk.split('_')[1])}"
        sd[f"{tn}.norm.weight"] = np.asarray(d["norm"]["scale"][p], np.float64)
        sd[f"{tn}.w1.weight"] = np.asarray(d["w1"]["kernel"][p], np.float64).T
        sd[f"{tn}.w2.weight"] = np.asarray(d["w2"]["kernel"][p], np.float64).T
    else:
      sd[f"{name}.weight"] = np.asarray(node["kernel"][p], np.float64).T
      sd[f"{name}.bias"] = np.asarray(node["bias"][p], np.float64)
  return sd


# --- fixtures -------------------------------------------------------------------------
def random_params(config, layer_map, seed, key_logits, value_logits):
  params = F.init(config, layer_map, jax.random.key(seed))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda x: x + jnp.asarray(0.2 * rng.normal(size=x.shape), x.dtype),
                        params)
  params["key_gate_logit"] = jnp.asarray(key_logits, jnp.float32)
  params["value_gate_logit"] = jnp.asarray(value_logits, jnp.float32)
  return params


def random_cache(seed, layers, heads, head_dim, dtype=jnp.float32):
  rng = np.random.default_rng(seed)
  shape = (layers, B, heads, T, head_dim)
  return KVCache(k=jnp.asarray(rng.normal(size=shape), dtype),
                 v=jnp.asarray(rng.normal(size=shape), dtype),
                 start=jnp.array([0, 1], jnp.int32), end=jnp.int32(T))


MASK = jnp.array([[True, True, False, True, True], [False, True, True, True, False]])
LMAP = F.LayerMap((0, 2, 3, 4), (3, 0, 1, 2))  # receiver layer 1 unmapped
KEY_LOGITS = [1.0, 0.5, -0.3, -2.0]  # pair 0 both open, 1 key only, 2 value only, 3 closed
VALUE_LOGITS = [2.0, -1.0, 0.7, 0.0]


# --- layer maps -----------------------------------------------------------------------
def test_last_aligned_hand_worked():
  m = F.last_aligned(28, 24)  # receiver deeper: layers 0..3 unfused
  np.testing.assert_array_equal(m.receiver_idx, np.arange(4, 28))
  np.testing.assert_array_equal(m.sharer_idx, np.arange(0, 24))
  m = F.last_aligned(16, 36)
  np.testing.assert_array_equal(m.receiver_idx, np.arange(0, 16))
  np.testing.assert_array_equal(m.sharer_idx, np.arange(20, 36))
  m = F.last_aligned(30, 18)
  np.testing.assert_array_equal(m.receiver_idx, np.arange(12, 30))
  np.testing.assert_array_equal(m.sharer_idx, np.arange(0, 18))


def test_k_nearest_hand_worked():
  # Sharer layer round((S - 1) * t / (R - 1)) for every receiver layer t, worked by hand.
  m = F.k_nearest(28, 24)
  np.testing.assert_array_equal(m.receiver_idx, np.arange(28))
  np.testing.assert_array_equal(m.sharer_idx, [
      0, 1, 2, 3, 3, 4, 5, 6, 7, 8, 9, 9, 10, 11, 12, 13, 14, 14, 15, 16, 17, 18, 19, 20,
      20, 21, 22, 23])
  m = F.k_nearest(16, 36)
  np.testing.assert_array_equal(m.receiver_idx, np.arange(16))
  np.testing.assert_array_equal(m.sharer_idx,
                                [0, 2, 5, 7, 9, 12, 14, 16, 19, 21, 23, 26, 28, 30, 33, 35])
  m = F.k_nearest(30, 18)
  np.testing.assert_array_equal(m.receiver_idx, np.arange(30))
  np.testing.assert_array_equal(m.sharer_idx, [
      0, 1, 1, 2, 2, 3, 4, 4, 5, 5, 6, 6, 7, 8, 8, 9, 9, 10, 11, 11, 12, 12, 13, 13, 14, 15,
      15, 16, 16, 17])


def test_layer_map_validation_and_hash():
  with pytest.raises(ValueError, match="unique"):
    F.LayerMap((1, 1), (0, 2))
  with pytest.raises(ValueError, match="receiver layers but"):
    F.LayerMap((1,), (0, 2))
  assert hash(F.LayerMap(np.array([1, 2]), [3, 4])) == hash(F.LayerMap((1, 2), (3, 4)))
  assert F.LayerMap.from_json(json.loads(json.dumps(LMAP.to_json()))) == LMAP


# --- schedule and gates ---------------------------------------------------------------
def test_temperature_schedule():
  cfg = F.FuserConfig(1, 1, 1, 1, initial_temperature=1.0, final_temperature=0.001,
                      anneal_steps=1929)
  assert float(F.temperature(cfg, 0)) == pytest.approx(1.0)
  assert float(F.temperature(cfg, 1929)) == pytest.approx(0.001, rel=1e-5)
  assert float(F.temperature(cfg, 10_000)) == pytest.approx(0.001, rel=1e-5)
  assert float(F.temperature(cfg, 1929 / 2)) == pytest.approx(math.sqrt(0.001), rel=1e-5)
  assert float(jax.jit(lambda s: F.temperature(cfg, s))(482.25)) == pytest.approx(
      0.001 ** 0.25, rel=1e-5)


def _gumbel_mean_sigmoid(logit):
  """E[sigmoid(logit + g)] for g ~ Gumbel(0, 1), by quadrature of its density."""
  g = np.linspace(-8.0, 40.0, 200_001)
  dens = np.exp(-(g + np.exp(-g)))
  return np.trapezoid(dens / (1.0 + np.exp(-(logit + g))), g)


@pytest.mark.parametrize("logit", [-1.0, 0.0, 1.5])
def test_gumbel_gate_statistics(logit):
  n = 200_000
  soft = F.sample_gate(jax.random.key(3), jnp.float32(logit), (n,), 1.0)
  # tau = 1: mean relaxed gate against the Gumbel expectation (std err ~ 6e-4).
  assert float(jnp.mean(soft)) == pytest.approx(_gumbel_mean_sigmoid(logit), abs=3e-3)
  # tau -> 0: Bernoulli with P(logit + g > 0) = 1 - exp(-exp(logit)), not sigmoid(logit).
  hardish = F.sample_gate(jax.random.key(4), jnp.float32(logit), (n,), 1e-3)
  p_open = 1.0 - math.exp(-math.exp(logit))
  assert float(jnp.mean(hardish > 0.5)) == pytest.approx(p_open, abs=4e-3)
  assert abs(p_open - 1.0 / (1.0 + math.exp(-logit))) > 0.02  # the check can tell them apart
  assert float(jnp.mean((hardish > 1e-3) & (hardish < 1 - 1e-3))) < 0.01
  assert float(F.hard_gate(jnp.float32(logit))) == float(logit > 0)


def test_gate_openness():
  params = random_params(CFG, LMAP, 0, KEY_LOGITS, VALUE_LOGITS)
  stats = F.gate_openness(params)
  assert float(stats["key"]) == pytest.approx(0.5)
  assert float(stats["value"]) == pytest.approx(0.5)
  assert float(stats["all"]) == pytest.approx(0.5)


# --- fusion against NumPy -------------------------------------------------------------
def test_fuse_inference_matches_numpy():
  params = random_params(CFG, LMAP, 0, KEY_LOGITS, VALUE_LOGITS)
  receiver = random_cache(10, LR, KR, HR)
  sharer = random_cache(11, 4, 3, 2)
  out = F.fuse_jit((params,), receiver, (sharer,), (LMAP,), MASK, config=(CFG,))
  assert out.k.dtype == receiver.k.dtype and out.k.shape == receiver.k.shape
  ref_k, ref_v = np_fuse([[to_state_dict(params, p) for p in range(4)]], receiver, [sharer],
                         [LMAP], MASK, [CFG.num_layers], "parallel")
  np.testing.assert_allclose(out.k, ref_k, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.v, ref_v, rtol=1e-5, atol=1e-5)
  # Exact identities: unmapped layer 1, masked-out slots, closed gates.
  np.testing.assert_array_equal(out.k[1], receiver.k[1])
  np.testing.assert_array_equal(out.v[1], receiver.v[1])
  off = ~np.asarray(MASK)[:, None, :, None]
  for layer in (0, 2, 3, 4):
    np.testing.assert_array_equal(np.where(off, out.k[layer], 0),
                                  np.where(off, receiver.k[layer], 0))
  np.testing.assert_array_equal(out.v[2], receiver.v[2])  # pair 1: value gate closed
  np.testing.assert_array_equal(out.k[3], receiver.k[3])  # pair 2: key gate closed
  np.testing.assert_array_equal(out.k[4], receiver.k[4])  # pair 3: both closed
  np.testing.assert_array_equal(out.v[4], receiver.v[4])
  assert not np.allclose(out.k[2], receiver.k[2])  # open gates do change the cache
  assert not np.allclose(out.v[3], receiver.v[3])
  np.testing.assert_array_equal(out.start, receiver.start)
  assert int(out.end) == int(receiver.end)


def test_fuser_layer_train_with_given_noise_matches_numpy():
  params = random_params(CFG, LMAP, 1, KEY_LOGITS, VALUE_LOGITS)
  receiver, sharer = random_cache(20, LR, KR, HR), random_cache(21, 4, 3, 2)
  rng = np.random.default_rng(5)
  noise = (rng.gumbel(size=(B, T, KR)), rng.gumbel(size=(B, T, KR)))
  tau = float(F.temperature(CFG, 300))
  p, rl, sl = 1, LMAP.receiver[1], LMAP.sharer[1]
  one = jax.tree.map(lambda x: x[p], params)
  fk, fv = F.FuserLayer(CFG).apply(
      {"params": one}, sharer.k[sl], sharer.v[sl], receiver.k[rl], receiver.v[rl], train=True,
      tau=tau, gumbel_noise=tuple(jnp.asarray(g, jnp.float32) for g in noise))
  rk, rv = np_fuse_layer(to_state_dict(params, p), *(np.asarray(x, np.float64) for x in (
      sharer.k[sl], sharer.v[sl], receiver.k[rl], receiver.v[rl])), CFG.num_layers,
                         noise=noise, tau=tau)
  np.testing.assert_allclose(fk, rk, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fv, rv, rtol=1e-5, atol=1e-5)
  bad = (noise[0][..., :1], noise[1][..., :1])  # [B, T, 1] instead of [B, T, Kr]
  with pytest.raises(ValueError, match=r"gumbel_noise\[0\] \(keys\) has shape"):
    F.FuserLayer(CFG).apply(
        {"params": one}, sharer.k[sl], sharer.v[sl], receiver.k[rl], receiver.v[rl],
        train=True, tau=tau, gumbel_noise=tuple(jnp.asarray(g, jnp.float32) for g in bad))


def test_fuse_train_mode_wiring():
  receiver, sharer = random_cache(30, LR, KR, HR), random_cache(31, 4, 3, 2)
  saturated = random_params(CFG, LMAP, 2, [40.0, -40.0, 40.0, -40.0], [40.0, 40.0, -40.0, -40.0])
  train = lambda params, rng, step: F.fuse_jit((params,), receiver, (sharer,), (LMAP,), MASK,
                                               config=(CFG,), train=True, rng=rng, step=step)
  # Saturated logits: relaxed gates are 0/1, so train (dropout 0) equals inference.
  out_t = train(saturated, jax.random.key(0), 5)
  out_i = F.fuse_jit((saturated,), receiver, (sharer,), (LMAP,), MASK, config=(CFG,))
  np.testing.assert_allclose(out_t.k, out_i.k, atol=1e-5)
  np.testing.assert_allclose(out_t.v, out_i.v, atol=1e-5)
  # Soft gates: deterministic per rng, noisy across rngs, masked slots still untouched.
  soft = random_params(CFG, LMAP, 2, [0.0] * 4, [0.0] * 4)
  a, b = train(soft, jax.random.key(1), 0), train(soft, jax.random.key(1), 0)
  c = train(soft, jax.random.key(2), 0)
  np.testing.assert_array_equal(a.k, b.k)
  assert not np.allclose(a.k, c.k)
  off = ~np.asarray(MASK)[:, None, :, None]
  np.testing.assert_array_equal(np.where(off, a.k[0], 0), np.where(off, receiver.k[0], 0))
  with pytest.raises(ValueError, match="rng"):
    F.fuse((soft,), receiver, (sharer,), (LMAP,), MASK, config=(CFG,), train=True)


def test_dropout_active_only_in_train():
  cfg = dataclasses.replace(CFG, dropout=0.5)
  params = random_params(cfg, LMAP, 3, [40.0] * 4, [40.0] * 4)
  receiver, sharer = random_cache(32, LR, KR, HR), random_cache(33, 4, 3, 2)
  run = lambda train: F.fuse_jit((params,), receiver, (sharer,), (LMAP,), MASK, config=(cfg,),
                                 train=train, rng=jax.random.key(0))
  # same weights, no dropout
  ref = F.fuse_jit((params,), receiver, (sharer,), (LMAP,), MASK, config=(CFG,))
  np.testing.assert_allclose(run(False).k, ref.k, atol=1e-6)
  assert not np.allclose(run(True).k, ref.k, atol=1e-3)


def test_closed_gates_exact_in_bf16_and_prune():
  params = random_params(CFG, LMAP, 4, KEY_LOGITS, VALUE_LOGITS)
  receiver = random_cache(40, LR, KR, HR, jnp.bfloat16)
  sharer = random_cache(41, 4, 3, 2, jnp.bfloat16)
  out = F.fuse_jit((params,), receiver, (sharer,), (LMAP,), MASK, config=(CFG,))
  assert out.k.dtype == jnp.bfloat16
  f32 = lambda x: np.asarray(x, np.float32)
  np.testing.assert_array_equal(f32(out.k[4]), f32(receiver.k[4]))
  np.testing.assert_array_equal(f32(out.v[4]), f32(receiver.v[4]))
  pruned, pmap = F.prune(params, LMAP)
  assert pmap == F.LayerMap((0, 2, 3), (3, 0, 1))
  np.testing.assert_array_equal(pruned["key_gate_logit"], np.asarray(KEY_LOGITS[:3], np.float32))
  np.testing.assert_array_equal(pruned["key_in"]["kernel"], params["key_in"]["kernel"][:3])
  out_p = F.fuse_jit((pruned,), receiver, (sharer,), (pmap,), MASK, config=(CFG,))
  np.testing.assert_array_equal(f32(out_p.k), f32(out.k))
  np.testing.assert_array_equal(f32(out_p.v), f32(out.v))
  with pytest.raises(TypeError, match="layer_map must be one fuser's LayerMap"):
    F.prune((params, params), (LMAP, LMAP))
  # All closed: nothing left, and fusion is the identity.
  closed = random_params(CFG, LMAP, 4, [-1.0] * 4, [0.0] * 4)
  empty, emap = F.prune(closed, LMAP)
  assert len(emap) == 0 and empty["key_in"]["kernel"].shape[0] == 0
  out_e = F.fuse((empty,), receiver, (sharer,), (emap,), MASK, config=(CFG,))
  np.testing.assert_array_equal(f32(out_e.k), f32(receiver.k))


@pytest.mark.parametrize("mode", ["parallel", "sequential"])
def test_two_sharers_match_numpy(mode):
  map1 = F.LayerMap((0, 2, 3), (3, 0, 1))
  map2 = F.LayerMap((3, 4, 0), (5, 6, 0))  # layers 0 and 3 fused by both sharers
  p1 = random_params(CFG, map1, 5, [1.0, 0.3, 2.0], [0.5, 1.0, -1.0])
  p2 = random_params(CFG2, map2, 6, [0.5, 1.0, 2.0], [1.0, -1.0, 0.2])
  receiver = random_cache(50, LR, KR, HR)
  s1, s2 = random_cache(51, 4, 3, 2), random_cache(52, 7, 1, 6)
  out = F.fuse_jit((p1, p2), receiver, (s1, s2), (map1, map2), MASK, config=(CFG, CFG2),
                   mode=mode)
  sds = [[to_state_dict(p1, i) for i in range(3)], [to_state_dict(p2, i) for i in range(3)]]
  ref_k, ref_v = np_fuse(sds, receiver, [s1, s2], [map1, map2], MASK, [4, 3], mode)
  np.testing.assert_allclose(out.k, ref_k, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.v, ref_v, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(out.k[1], receiver.k[1])
  other = np_fuse(sds, receiver, [s1, s2], [map1, map2], MASK, [4, 3],
                  "sequential" if mode == "parallel" else "parallel")[0]
  assert not np.allclose(ref_k[3], other[3], atol=1e-3)  # the modes really differ


def test_shape_checks():
  params = random_params(CFG, LMAP, 0, KEY_LOGITS, VALUE_LOGITS)
  receiver = random_cache(60, LR, KR, HR)
  with pytest.raises(ValueError, match="Sharer cache has"):
    F.fuse((params,), receiver, (random_cache(61, 4, 1, 6),), (LMAP,), MASK, config=(CFG,))
  with pytest.raises(ValueError, match="out of range"):
    F.fuse((params,), receiver, (random_cache(61, 3, 3, 2),), (LMAP,), MASK, config=(CFG,))
  with pytest.raises(ValueError, match="fusers but the layer map"):
    F.fuse((params,), receiver, (random_cache(61, 4, 3, 2),), (F.LayerMap((0,), (0,)),), MASK,
           config=(CFG,))


def test_one_sharer_is_a_tuple_too():
  """Per-sharer arguments are sequences, also for one sharer: a single value is an error
  naming the argument."""
  params = random_params(CFG, LMAP, 0, KEY_LOGITS, VALUE_LOGITS)
  receiver, sharer = random_cache(62, LR, KR, HR), random_cache(63, 4, 3, 2)
  ok = F.fuse((params,), receiver, (sharer,), (LMAP,), MASK, config=(CFG,))
  assert not np.allclose(ok.k, receiver.k)
  for name, args, config in (
      ("params", (params, (sharer,), (LMAP,)), (CFG,)),
      ("sharer_caches", ((params,), sharer, (LMAP,)), (CFG,)),
      ("layer_map", ((params,), (sharer,), LMAP), (CFG,)),
      ("config", ((params,), (sharer,), (LMAP,)), CFG)):
    with pytest.raises(TypeError, match=f"{name} must be a sequence"):
      F.fuse(args[0], receiver, args[1], args[2], MASK, config=config)
  with pytest.raises(TypeError, match="sharer_caches must be a sequence"):
    F.fuse_jit((params,), receiver, sharer, (LMAP,), MASK, config=(CFG,))


def test_gradients_flow_in_train_mode():
  cfg = dataclasses.replace(CFG, dropout=0.1)
  params = random_params(cfg, LMAP, 7, [0.0] * 4, [0.0] * 4)
  receiver, sharer = random_cache(70, LR, KR, HR), random_cache(71, 4, 3, 2)
  target = random_cache(72, LR, KR, HR)

  @jax.jit
  def loss(params):
    out = F.fuse((params,), receiver, (sharer,), (LMAP,), MASK, config=(cfg,), train=True,
                 rng=jax.random.key(0), step=100)
    return jnp.mean((out.k - target.k) ** 2) + jnp.mean((out.v - target.v) ** 2)

  grads = jax.grad(loss)(params)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(g)), path
    assert float(jnp.max(jnp.abs(g))) > 0, path


def test_for_models():
  class M:
    def __init__(self, k, h):
      self.num_kv_heads, self.head_dim, self.num_layers = k, h, 4
  cfg = F.FuserConfig.for_models(M(8, 128), M(2, 64), hidden_dim=32)
  assert (cfg.receiver_kv_heads, cfg.receiver_head_dim) == (8, 128)
  assert (cfg.sharer_kv_heads, cfg.sharer_head_dim, cfg.hidden_dim) == (2, 64, 32)
  assert cfg.intermediate_dim == 1024 and cfg.anneal_steps == 1929 and cfg.dropout == 0.1


# --- checkpoints ----------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
  params = random_params(CFG, LMAP, 8, KEY_LOGITS, VALUE_LOGITS)
  meta = {"receiver": "org/recv-0.6b", "sharer": "org/share-0.5b", "step": 12}
  F.save(tmp_path / "ckpt", (params,), (CFG,), (LMAP,), meta)
  (p2,), c2, m2, meta2 = F.load(tmp_path / "ckpt")  # tuples, also for one sharer
  assert c2 == (CFG,) and m2 == (LMAP,) and meta2 == meta
  jax.tree.map(np.testing.assert_array_equal, p2, params)
  with pytest.raises(ValueError):
    F.save(tmp_path / "ckpt", (params,), (CFG,), (LMAP,), meta)
  F.save(tmp_path / "ckpt", (params,), (CFG,), (LMAP,), {"step": 13}, overwrite=True)
  assert F.load(tmp_path / "ckpt")[3] == {"step": 13}
  with pytest.raises(TypeError, match="save: layer_map must be a sequence"):
    F.save(tmp_path / "one", (params,), (CFG,), LMAP)
  with pytest.raises(ValueError, match="one entry per sharer; got 2, 1, 1"):
    F.save(tmp_path / "one", (params, params), (CFG,), (LMAP,))
  # Several sharers, one bf16.
  cfg2 = dataclasses.replace(CFG2, param_dtype="bfloat16")
  map2 = F.LayerMap((1,), (2,))
  q = F.init(cfg2, map2, jax.random.key(9))
  F.save(tmp_path / "multi", (params, q), (CFG, cfg2), (LMAP, map2), {})
  ps, cs, ms, _ = F.load(tmp_path / "multi")
  assert cs == (CFG, cfg2) and ms == (LMAP, map2)
  assert ps[1]["key_in"]["kernel"].dtype == jnp.bfloat16
  jax.tree.map(np.testing.assert_array_equal, ps[1], q)


# --- import of the released PyTorch format ----------------------------------------------
def _write_release(tmp_path, torch, state_dicts, config, mapping):
  init_args = {
      "source_dim": config.sharer_head_dim, "target_dim": config.receiver_head_dim,
      "source_num_heads": config.sharer_kv_heads, "target_num_heads": config.receiver_kv_heads,
      "hidden_dim": config.hidden_dim, "intermediate_dim": config.intermediate_dim,
      "num_layers": config.num_layers, "dropout": 0.1, "initial_temperature": 1.0,
      "final_temperature": 0.001, "anneal_steps": 1929,
      "dtype": {"__type__": "torch.dtype", "value": "bfloat16"}}
  for i, sd in enumerate(state_dicts):
    torch.save({k: torch.tensor(v, dtype=torch.float32) for k, v in sd.items()},
               tmp_path / f"projector_{i}.pt")
    (tmp_path / f"projector_{i}.json").write_text(
        json.dumps({"class": "C2CProjector", "init_args": init_args}))
  (tmp_path / "projector_config.json").write_text(json.dumps(mapping))


def _random_state_dict(rng, config, key_logit, value_logit):
  """A C2CProjector state dict in PyTorch layout, written from the released shapes."""
  hid, inter, nl = config.hidden_dim, config.intermediate_dim, config.num_layers
  hs_ds, ht, ht_dt = config.sharer_dim, config.receiver_kv_heads, config.receiver_dim
  sd = {"gate_temperature": np.float32(0.5)}
  for p, logit in (("key", key_logit), ("value", value_logit)):
    sd[f"{p}_gate_logit"] = np.float32(logit)
    shapes = {f"{p}_in.weight": (hid, hs_ds + ht_dt), f"{p}_in.bias": (hid,),
              f"{p}_scalar_head.weight": (ht, hid), f"{p}_scalar_head.bias": (ht,),
              f"{p}_proj_out.weight": (ht_dt, hid), f"{p}_proj_out.bias": (ht_dt,)}
    blocks = [(f"{p}_mlp1.blocks.0", inter), (f"{p}_scalar_mlp2.blocks.0", hid)]
    blocks += [(f"{p}_proj_mlp2.blocks.{j}", inter) for j in range(nl - 2)]
    for name, width in blocks:
      shapes[f"{name}.norm.weight"] = (hid,)
      shapes[f"{name}.w1.weight"] = (width, hid)
      shapes[f"{name}.w2.weight"] = (hid, width)
    for name, shape in shapes.items():
      scale = 1.0 / math.sqrt(shape[-1])
      base = 1.0 if name.endswith("norm.weight") else 0.0
      sd[name] = (base + scale * rng.normal(size=shape)).astype(np.float32)
  return sd


def test_import_rosetta_matches_numpy(tmp_path):
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(0)
  logits = [(1.0, 0.5), (-1.0, 2.0), (0.3, -0.2)]
  sds = [_random_state_dict(rng, CFG, *lk) for lk in logits]
  # Receiver layers 4, 0, 2 <- sharer layers 1, 3, 0 via projectors 0, 1, 2.
  mapping = {"0": {"1": {"4": [[1, 0]], "0": [[3, 1]], "2": [[0, 2]]}}}
  _write_release(tmp_path, torch, sds, CFG, mapping)
  (params,), (config,), (layer_map,) = F.import_rosetta(tmp_path)
  assert config == dataclasses.replace(CFG, dropout=0.1)
  assert layer_map == F.LayerMap((0, 2, 4), (3, 0, 1))
  receiver, sharer = random_cache(80, LR, KR, HR), random_cache(81, 4, 3, 2)
  out = F.fuse_jit((params,), receiver, (sharer,), (layer_map,), MASK, config=(config,))
  ref_sds = [{k: np.asarray(v, np.float64) for k, v in sds[i].items()} for i in (1, 2, 0)]
  ref_k, ref_v = np_fuse([ref_sds], receiver, [sharer], [layer_map], MASK, [CFG.num_layers],
                         "parallel")
  np.testing.assert_allclose(out.k, ref_k, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(out.v, ref_v, rtol=1e-5, atol=1e-5)
  assert not np.allclose(out.k[4], receiver.k[4])


def test_import_rosetta_shape_mismatch(tmp_path):
  torch = pytest.importorskip("torch")
  sd = _random_state_dict(np.random.default_rng(1), CFG, 1.0, 1.0)
  sd["value_proj_out.weight"] = sd["value_proj_out.weight"][:, :-1]
  _write_release(tmp_path, torch, [sd], CFG, {"0": {"1": {"0": [[0, 0]]}}})
  with pytest.raises(ValueError, match=r"value_proj_out\.weight.*\(8, 11\).*\(8, 12\)"):
    F.import_rosetta(tmp_path)


def test_init_is_pytorch_default():
  params = F.init(CFG, LMAP, jax.random.key(0))
  fan_in = CFG.sharer_dim + CFG.receiver_dim
  kernel = np.asarray(params["value_in"]["kernel"])  # [P, in, hidden]
  assert kernel.shape == (4, fan_in, CFG.hidden_dim)
  assert np.abs(kernel).max() <= 1 / math.sqrt(fan_in)
  assert np.std(kernel) == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.15)
  assert not np.allclose(kernel[0], kernel[1])
  w2 = np.asarray(params["key_proj_mlp2"]["blocks_1"]["w2"]["kernel"])
  assert w2.shape == (4, CFG.intermediate_dim, CFG.hidden_dim)
  assert np.abs(w2).max() <= 1 / math.sqrt(CFG.intermediate_dim)
  np.testing.assert_array_equal(params["key_mlp1"]["blocks_0"]["norm"]["scale"], 1.0)
  np.testing.assert_array_equal(params["value_gate_logit"], np.zeros(4))
  assert float(F.gate_openness(params)["all"]) == 0.0


def test_gate_init_starts_the_gates_open():
  cfg = dataclasses.replace(CFG, gate_init=4.0)
  params = F.init(cfg, LMAP, jax.random.key(0))
  np.testing.assert_array_equal(params["key_gate_logit"], np.full(4, 4.0))
  assert float(F.gate_openness(params)["all"]) == 1.0
  sk = jnp.zeros((1, cfg.sharer_kv_heads, 2, cfg.sharer_head_dim))
  rk = jnp.zeros((1, cfg.receiver_kv_heads, 2, cfg.receiver_head_dim))
  flax_init = F.FuserLayer(cfg).init(jax.random.key(0), sk, sk, rk, rk)
  assert float(flax_init["params"]["value_gate_logit"]) == 4.0
  # Training draws: sigmoid((4 + g) / tau) with a standard Gumbel g is open unless g < -4.
  noise = jax.random.gumbel(jax.random.key(1), (100_000,))
  open_frac = float(jnp.mean(F.soft_gate(jnp.float32(4.0), noise, 0.001) > 0.5))
  assert open_frac > 0.999


@pytest.mark.parametrize("at_once", [2, 3, 4])  # 3: the 4 pairs as 3 + 1
def test_pairs_at_once_same_outputs_draws_and_gradients(at_once):
  """Pairs computed together (vmapped in the loop over pairs) give what one pair at a
  time gives: outputs, the random draws of train mode (dropout, Gumbel noise) and the
  gradients."""
  cfg = dataclasses.replace(CFG, dropout=0.3)
  params = random_params(cfg, LMAP, 8, [0.3, -0.2, 0.1, 0.0], [0.0, 0.4, -0.1, 0.2])
  receiver, sharer = random_cache(80, LR, KR, HR), random_cache(81, 4, 3, 2)
  target = random_cache(82, LR, KR, HR)

  def run(params, n, train):
    return F.fuse((params,), receiver, (sharer,), (LMAP,), MASK, config=(cfg,), train=train,
                  rng=jax.random.key(3), step=7, pairs_at_once=n)

  def loss(params, n):
    out = run(params, n, True)
    return jnp.mean((out.k - target.k) ** 2) + jnp.mean((out.v - target.v) ** 2)

  for train in (False, True):
    one, many = (jax.jit(run, static_argnums=(1, 2))(params, n, train) for n in (1, at_once))
    np.testing.assert_allclose(many.k, one.k, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(many.v, one.v, rtol=1e-5, atol=1e-6)
  g1, gn = (jax.jit(jax.grad(loss), static_argnums=1)(params, n) for n in (1, at_once))
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g1), jax.tree.leaves(gn)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-6, err_msg=str(path))
    assert float(jnp.max(jnp.abs(a))) > 0, path


def test_pairs_at_once_refuses_a_bad_value():
  receiver, sharer = random_cache(83, LR, KR, HR), random_cache(84, 4, 3, 2)
  params = random_params(CFG, LMAP, 9, [0.0] * 4, [0.0] * 4)
  for bad in (0, -1, 2.0, True):
    with pytest.raises(ValueError, match="pairs_at_once must be an integer >= 1"):
      F.fuse((params,), receiver, (sharer,), (LMAP,), MASK, config=(CFG,), pairs_at_once=bad)
