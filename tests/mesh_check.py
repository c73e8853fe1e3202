"""One training step on a 2x2x2 mesh of 8 fake CPU devices vs one device (run by
tests/test_train.py in a subprocess, since the device count is fixed at JAX start)."""

import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from c2cjax import sharding  # noqa: E402
from c2cjax.c2c import C2C, Fuser  # noqa: E402
from c2cjax.defaults import train_config  # noqa: E402
from c2cjax.models.tiny import tiny_lm  # noqa: E402
from c2cjax.train import TrainState, make_optimizer, make_train_step  # noqa: E402


def run(mesh_shape):
  mesh = sharding.make_mesh(mesh_shape, jax.devices()[:int(np.prod(list(mesh_shape.values())))])
  r, s = tiny_lm("qwen3", seed=0), tiny_lm("gemma3", seed=1)  # kv heads 2 and 1
  f = Fuser.init(r, s, jax.random.PRNGKey(3), hidden_dim=32, intermediate_dim=48, dropout=0.0)
  c2c = C2C(r, [s], [f])
  cfg = train_config()
  tx, _ = make_optimizer(cfg, 10)
  rng = np.random.default_rng(0)
  A, B, T = 2, 4, 16
  batch = {
      "receiver_ids": rng.integers(3, 128, (A, B, T)).astype(np.int32),
      "sharer_ids": (rng.integers(3, 128, (A, B, T)).astype(np.int32),),
      "attention_mask": np.ones((A, B, T), np.int32),
      "fuse_mask": np.tile((np.arange(T) < 7).astype(np.int32), (A, B, 1)),
      "loss_mask": np.tile((np.arange(T) >= 8).astype(np.int32), (A, B, 1)),
  }
  r_sh, s_sh = sharding.llm_shardings(r, mesh), (sharding.llm_shardings(s, mesh),)
  f_sh = sharding.fuser_shardings((f.params,), mesh)
  params = jax.device_put((f.params,), f_sh)
  state = TrainState(jnp.int32(0), params, jax.jit(tx.init)(params), jax.random.PRNGKey(5))
  step = jax.jit(make_train_step(c2c, tx))
  batch = jax.device_put(batch, NamedSharding(mesh, P(None, sharding.BATCH_AXES)))
  state, m = step(state, jax.device_put(r.params, r_sh), jax.device_put((s.params,), s_sh),
                  batch)
  return float(m["loss"]), jax.device_get(state.params)


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  loss1, p1 = run({"data": 1, "fsdp": 1, "tensor": 1})
  loss8, p8 = run({"data": 2, "fsdp": 2, "tensor": 2})
  print("loss", loss1, loss8)
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-5), p8, p1)
  moved = max(float(np.abs(np.asarray(a)).max()) for a in jax.tree.leaves(p1))
  assert moved > 0
  print("MESH_OK")
  sys.exit(0)
