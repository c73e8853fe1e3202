"""Device mesh and logical-axis sharding rules for LLM params, fuser params and batches.

Mesh axes: ``data`` (pure data parallel), ``fsdp`` (data parallel + sharded params) and
``tensor`` (heads / mlp / vocab split). Any axis size may be -1 for "the rest of the
devices". A dimension that a mesh axis does not divide (e.g. 3 KV heads on a tensor axis
of 2) is replicated on that axis instead of failing.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# Logical axis name (see c2cjax.models.layers) -> mesh axis.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("head_dim", None),
    ("norm", None),
    ("layers", None),
)


# Activations and caches: logical names of their dims -> mesh axes (see ``constrain``).
# Batch over the data-parallel axes, heads over ``tensor``; sequence, hidden and head_dim
# replicated (``embed`` is not reused: it shards params over ``fsdp``, which activations
# already use for their batch).
ACTIVATION_RULES: dict[str, Any] = {
    "act_batch": BATCH_AXES,
    "act_length": None,
    "act_embed": None,
    "act_heads": "tensor",
    "act_kv_heads": "tensor",
    "act_group": None,
    "act_head_dim": None,
    "act_vocab": "tensor",
    "act_layers": None,
}
HIDDEN = ("act_batch", "act_length", "act_embed")  # [B, S, D]
LOGITS = ("act_batch", "act_length", "act_vocab")  # [B, S, V]
HEADS_OUT = ("act_batch", "act_length", "act_heads", "act_head_dim")  # [B, S, N, H]
GROUPED_QUERIES = ("act_batch", "act_length", "act_kv_heads", "act_group", "act_head_dim")
CACHE_LAYER = ("act_batch", "act_kv_heads", "act_length", "act_head_dim")  # [B, K, T, H]
CACHE = ("act_layers",) + CACHE_LAYER  # KVCache.k / .v [L, B, K, T, H]


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
  """``with_sharding_constraint`` of ``x`` by logical dim names, under ``jax.set_mesh``.

  Without a mesh in context (single device, or a caller that did not set one) this is
  the identity, so models stay callable anywhere. Mesh axes that do not divide their dim
  (e.g. 1 KV head on a tensor axis of 2) are dropped for that dim (replicated).
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or len(names) != x.ndim:
    return x
  spec = []
  for dim, name in zip(x.shape, names):
    axes = ACTIVATION_RULES.get(name) if name else None
    names_ = (axes,) if isinstance(axes, str) else tuple(axes or ())
    names_ = tuple(a for a in names_ if a in mesh.shape)
    size = math.prod(mesh.shape[a] for a in names_)
    spec.append(names_ if names_ and dim % size == 0 else None)
  return jax.lax.with_sharding_constraint(x, P(*spec))


def maybe_initialize_distributed(**kwargs):
  """Starts ``jax.distributed`` on multi-process runs; a no-op on one process.

  TPU pods, SLURM and the other clusters JAX knows configure themselves. Anywhere else
  (several GPU or CPU hosts, or processes on one machine) set ``JAX_COORDINATOR_ADDRESS``
  (``host:port`` of process 0), ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` on every
  process; the last two are read here (JAX itself reads only the address). ``kwargs`` go
  to ``jax.distributed.initialize`` (e.g. ``heartbeat_timeout_seconds``).
  """
  import os
  if jax.distributed.is_initialized():  # by the caller
    _no_persistent_cache_on_cpu_processes()
    return
  names = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
  if any(n in os.environ for n in names[1:]):
    missing = [n for n in names if n not in os.environ]
    if missing:
      raise ValueError(f"a multi-process run needs {', '.join(names)}; missing {missing}")
    jax.distributed.initialize(os.environ[names[0]], int(os.environ[names[1]]),
                               int(os.environ[names[2]]), **kwargs)
  elif any(k in os.environ for k in ("TPU_WORKER_HOSTNAMES", "MEGASCALE_COORDINATOR_ADDRESS",
                                     "JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID")):
    try:
      jax.distributed.initialize(**kwargs)
    except RuntimeError as e:  # single host
      logging.info("jax.distributed.initialize skipped: %s", e)
  _no_persistent_cache_on_cpu_processes()


def _no_persistent_cache_on_cpu_processes():
  if (jax.distributed.is_initialized() and jax.process_count() > 1
      and jax.default_backend() == "cpu"
      and jax.config.jax_compilation_cache_dir and jax.config.jax_enable_compilation_cache):
    # jax 0.10: a restarted CPU process that loaded its programs from the persistent cache
    # hung in its first gloo collective; compile instead (the cache is a speed-up only).
    logging.warning("persistent compilation cache turned off: %d CPU processes",
                    jax.process_count())
    jax.config.update("jax_enable_compilation_cache", False)


def make_mesh(shape: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A mesh over ``AXES`` from sizes such as ``{"data": -1, "fsdp": 1, "tensor": 1}``."""
  devices = list(devices if devices is not None else jax.devices())
  sizes = [int(shape.get(a, 1)) for a in AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"at most one mesh axis may be -1, got {dict(zip(AXES, sizes))}")
  known = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if len(devices) % known:
      raise ValueError(f"{len(devices)} devices are not divisible by the fixed mesh axes "
                       f"{dict(zip(AXES, sizes))}")
    sizes[sizes.index(-1)] = len(devices) // known
  if math.prod(sizes) != len(devices):
    raise ValueError(f"mesh {dict(zip(AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"{len(devices)} available")
  return Mesh(np.asarray(devices).reshape(sizes), AXES)


def _fit(spec: P, shape: tuple[int, ...], mesh: Mesh, what: str) -> P:
  """Drops mesh axes from dims they do not divide (replicates there instead)."""
  out = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    names = (axes,) if isinstance(axes, str) else tuple(axes or ())
    size = math.prod(mesh.shape[a] for a in names)
    if names and dim % size:
      logging.warning("%s: dim %d is not divisible by mesh axes %s (size %d); replicating it",
                      what, dim, names, size)
      out.append(None)
    else:
      out.append(axes)
  return P(*out)


def llm_shardings(lm, mesh: Mesh, rules=LOGICAL_RULES):
  """NamedShardings for an :class:`c2cjax.models.LM`'s params, from its logical axes."""
  abstract = jax.eval_shape(lm.init_params, jax.random.PRNGKey(0))
  logical = nn.get_partition_spec(abstract)
  shapes = jax.tree.map(lambda x: x.value.shape if hasattr(x, "value") else x.shape, abstract,
                        is_leaf=lambda x: isinstance(x, nn.Partitioned))
  mesh_specs = nn.logical_to_mesh(logical, rules)
  return jax.tree.map(
      lambda spec, shape: NamedSharding(mesh, _fit(spec, shape, mesh, "LLM param")),
      mesh_specs, shapes, is_leaf=lambda x: isinstance(x, P))


def fuser_shardings(params, mesh: Mesh):
  """Fuser leaves: the largest dim that ``fsdp`` divides is sharded over it (FSDP)."""
  n = mesh.shape["fsdp"]

  def one(x):
    spec = [None] * x.ndim
    if n > 1 and x.ndim:
      for d in sorted(range(x.ndim), key=lambda d: -x.shape[d]):
        if x.shape[d] % n == 0:
          spec[d] = "fsdp"
          break
    return NamedSharding(mesh, P(*spec))

  return jax.tree.map(one, params)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis over the data-parallel axes."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)
