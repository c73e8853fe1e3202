"""Trains a C2C fuser: ``python -m c2cjax.train --config configs/local.py [--config.x=y]``.

Both LLMs are frozen (they are arguments of the step, never differentiated, never in the
optimizer); only the fuser params train. One optimizer step = one compiled call that
scans over ``accum`` micro-batches and averages the gradient over every response token
of the global batch, so the result does not depend on how the batch is split across
devices or micro-batches. Checkpoints (orbax, async, atomic) hold the step, fuser params,
optimizer state, rng and the grain iterator state, so a killed run resumes exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from c2cjax import align, c2c as c2c_lib, fuse as fuse_lib, sharding
from c2cjax.c2c import C2C, Fuser
from c2cjax.models.load import resolve
from c2cjax.release_prefill import release_prefill, run_index
from c2cjax.runtime import enable_compilation_cache

Batch = dict[str, Any]


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # optimizer steps done
  params: Any  # tuple of fuser params, one per sharer
  opt_state: Any
  rng: jax.Array


# --- losses ---------------------------------------------------------------------------------
def token_nll(logits: jax.Array, tokens: jax.Array, loss_mask: jax.Array):
  """Summed next-token NLL over target tokens and their count.

  logits [B, T, V] predict tokens[:, 1:]; ``loss_mask[b, t]`` marks token t as a target.
  """
  # logsumexp - target logit: no [B, T, V] log-probability array next to the logits.
  lf = logits[:, :-1].astype(jnp.float32)
  nll = (jax.nn.logsumexp(lf, axis=-1)
         - jnp.take_along_axis(lf, tokens[:, 1:, None], axis=-1)[..., 0])
  w = loss_mask[:, 1:].astype(jnp.float32)
  return jnp.sum(nll * w), jnp.sum(w)


def pass2_split(batch: Batch, parts: int) -> tuple[int, int]:
  """Static ``(start, fused_end)`` for :func:`c2c_nll` from a host batch ``[..., B, T]``.

  ``start``: pass 2 may begin at a slot where every real slot before it is fused in every
  row and no target needs an earlier position's logits (``loss_mask[..., :start + 1]``
  is 0) -- the single-turn case, where fused slots form a prefix of each row.
  ``fused_end``: pass 1 (prefills and fuser) only needs the slots up to the last fused one.
  Both are multiples of ``T // parts`` (so a bucket compiles at most ``parts`` variants);
  ``parts = 0`` or interleaved fused slots give ``(0, T)``: today's full rerun.
  """
  real = np.asarray(batch["attention_mask"]).astype(bool)
  t = real.shape[-1]
  if parts <= 0:
    return 0, t
  g = max(1, t // parts)
  real = real.reshape(-1, t)
  fuse = np.asarray(batch["fuse_mask"]).astype(bool).reshape(-1, t) & real
  targets = np.asarray(batch["loss_mask"]).astype(bool).reshape(-1, t)[:, 1:].any(0)
  cols = np.flatnonzero(fuse.any(0))
  fused_end = min(t, max(g, -(-(int(cols[-1]) + 1 if cols.size else 0) // g) * g))
  unfused = np.flatnonzero((real & ~fuse).any(0))
  first_target = int(np.argmax(targets)) + 1 if targets.any() else t
  start = min(int(unfused[0]) if unfused.size else t, first_target - 1, t - 1, fused_end)
  return (start // g) * g, fused_end


def c2c_nll(c2c: C2C, fparams, rparams, sparams, batch: Batch, *, train: bool, rng=None,
            step=0, split: tuple[int, int] | None = None, max_runs: int = 4):
  """Receiver loss on the response tokens, reading a cache fused on the prompt tokens.

  Pass 1 prefills receiver and sharers and fuses the ``fuse_mask`` slots; pass 2 reruns
  the receiver on that cache, keeping the fused slots (``keep``) and computing fresh
  keys/values elsewhere: exactly what the last prompt token and the response see in C2C
  generation. ``split = (start, fused_end)`` (static, from :func:`pass2_split`): pass 1
  runs on the first ``fused_end`` tokens only and pass 2 on the tokens from ``start`` on,
  reading the fused cache before it (the original code's "fused section once, then the
  rest on that prefix cache"). The loss and the fuser gradients are the same as the full
  rerun's (``None``: ``(0, T)``); in train mode only the random draws (Gumbel noise,
  dropout) follow the fused length's shape.
  With the release scheme (``c2c.alignment == "release"``) each run of fused slots is
  fused in its own pass, up to ``max_runs`` (static; see ``c2cjax.release_prefill``), the
  sharers read their own ``sharer_attention_mask``, and ``split`` is not used.
  """
  tokens, mask = batch["receiver_ids"], batch["attention_mask"]
  t = tokens.shape[1]
  start, fused_end = split if split is not None else (0, t)
  sharer_ids = batch["sharer_ids"]  # a tuple: one [B, T] per sharer
  fuse_mask = batch["fuse_mask"].astype(bool) & mask.astype(bool)
  if c2c.alignment == "release":
    smasks = batch["sharer_attention_mask"]  # a tuple, as sharer_ids
    b, t = tokens.shape
    active = tuple(range(len(c2c.sharers)))
    caches = tuple(c2c.sharers[i].module_prefill(
        sparams[i], sharer_ids[i], c2c.sharers[i].init_cache(b, t, holes=True), smasks[i])
        for i in active)
    fuse = lambda rc, cs, tm: c2c_lib.fuse_caches(c2c.spec, fparams, rc, cs, tm, active,
                                                  train=train, rng=rng, step=step)
    logits, _ = release_prefill(c2c.receiver.module, rparams, tokens, mask, caches, fuse,
                                run_index(fuse_mask), max_runs, t, last_only=False)
    return token_nll(logits, tokens, batch["loss_mask"])
  head = lambda x: x[:, :fused_end]
  with jax.named_scope("pass1_prefill_fuse"):
    cache = c2c.fused_cache(rparams, sparams, fparams, head(tokens), head(mask),
                            tuple(head(x) for x in sharer_ids), head(fuse_mask),
                            tuple(range(len(c2c.sharers))), train=train, rng=rng, step=step)
    if fused_end < t:
      cache = cache.pad_to(t)
    cache = cache.replace(k=sharding.constrain(cache.k, sharding.CACHE),
                          v=sharding.constrain(cache.v, sharding.CACHE))
  with jax.named_scope("pass2_receiver"):
    logits, _ = c2c.receiver.module_apply(rparams, tokens[:, start:],
                                          cache.replace(end=jnp.int32(start)), keep=fuse_mask)
    logits = sharding.constrain(logits, sharding.LOGITS)
  with jax.named_scope("loss"):
    return token_nll(logits, tokens[:, start:], batch["loss_mask"][:, start:])


def receiver_nll(c2c: C2C, rparams, batch: Batch):
  """The receiver alone on the same tokens (the baseline C2C must beat)."""
  tokens = batch["receiver_ids"]
  r = c2c.receiver
  logits, _ = r.module_apply(rparams, tokens, r.init_cache(*tokens.shape),
                             batch["attention_mask"])
  return token_nll(logits, tokens, batch["loss_mask"])


# --- optimizer and steps ---------------------------------------------------------------------
def make_optimizer(cfg: ml_collections.ConfigDict, total_steps: int):
  o = cfg.optimizer
  warmup = max(1, int(o.warmup_fraction * total_steps))
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, o.lr, warmup),
       optax.linear_schedule(o.lr, o.final_lr, max(1, total_steps - warmup))], [warmup])
  tx = optax.chain(optax.clip_by_global_norm(o.grad_clip),
                   optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
  return tx, schedule


def make_train_step(c2c: C2C, tx, max_runs: int = 4):
  """``(state, rparams, sparams, batch [A, B, T], split=None) -> (state, metrics)``.

  Jit it with ``split`` static (:func:`pass2_split`) and the state donated. Metrics stay
  on device (the loop reads them every ``log_every`` steps), gate openness included, so
  the loop never copies the fuser to the host.
  """

  def step_fn(state: TrainState, rparams, sparams, batch: Batch, split=None):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_and_grad(mb, key):
      def f(fparams):
        return c2c_nll(c2c, fparams, rparams, sparams, mb, train=True, rng=key,
                       step=state.step, split=split, max_runs=max_runs)
      return jax.value_and_grad(f, has_aux=True)(state.params)

    accum = batch["receiver_ids"].shape[0]
    if accum == 1:  # no scan, no zero-initialised gradient carry
      (loss, count), grads = loss_and_grad(jax.tree.map(lambda x: x[0], batch),
                                           jax.random.fold_in(rng, 0))
    else:
      def micro(carry, xs):
        grads, loss, count = carry
        mb, i = xs
        (s, n), g = loss_and_grad(mb, jax.random.fold_in(rng, i))
        return (jax.tree.map(jnp.add, grads, g), loss + s, count + n), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, loss, count), _ = jax.lax.scan(
          micro, (zeros, jnp.float32(0), jnp.float32(0)), (batch, jnp.arange(accum)))
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    with jax.named_scope("optimizer"):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    gates = [fuse_lib.gate_openness(p)["all"] for p in params]
    metrics = {"loss": loss / denom, "tokens": count, "grad_norm": optax.global_norm(grads),
               "temperature": fuse_lib.temperature(c2c.fusers[0].config, state.step),
               "gate_open": jnp.mean(jnp.stack(gates)) if gates else jnp.float32(0)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step_fn


def make_eval_step(c2c: C2C, max_runs: int = 4):
  def eval_fn(fparams, rparams, sparams, batch: Batch):
    s, n = c2c_nll(c2c, fparams, rparams, sparams, batch, train=False, max_runs=max_runs)
    r, _ = receiver_nll(c2c, rparams, batch)
    return {"c2c": s, "receiver": r, "tokens": n}
  return eval_fn


# --- setup -----------------------------------------------------------------------------------
def llm_dtype(name: str):
  """``cfg.llm_dtype`` -> dtype; "auto": bfloat16 on GPU/TPU, float32 on CPU.

  No loss scaling with bf16: bfloat16 keeps float32's 8-bit exponent, so activations and
  gradients through the frozen LLMs neither underflow nor overflow where fp32 would not
  (loss scaling exists for fp16's 5-bit exponent); the trained fuser, its gradients and
  the optimizer state are float32, and the loss is computed from fp32 logits.
  """
  if name == "auto":
    return jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  if name not in dtypes:
    raise ValueError(f"llm_dtype must be one of {sorted(dtypes) + ['auto']}, got {name!r}")
  return dtypes[name]


def build_c2c(cfg: ml_collections.ConfigDict, rng) -> C2C:
  """Loads the frozen LLMs and initialises one fuser per sharer."""
  dtype = llm_dtype(cfg.llm_dtype)
  receiver = resolve(cfg.receiver, dtype, seed=cfg.seed, remat=cfg.remat)
  if cfg.self_fusion:  # ablation: the receiver's own cache plays the sharer
    sharers = [receiver]
  else:
    sharers = [resolve(s, dtype, seed=cfg.seed + 1 + i) for i, s in enumerate(cfg.sharers)]
  fusers = [Fuser.init(receiver, s, jax.random.fold_in(rng, i), cfg.layer_map,
                       alignment=cfg.alignment, **dict(cfg.fuser))
            for i, s in enumerate(sharers)]
  return C2C(receiver, sharers, fusers, mode=cfg.fusion_mode, alignment=cfg.alignment,
             strategy=cfg.get("alignment_strategy", "first"), max_len=cfg.data.max_len)


def build_data(cfg, c2c: C2C, batch_size: int, *, heldout: bool, seed: int,
               shard_block: int = 1):
  from c2cjax.data import chat, pipeline, sources
  src = sources.load_source(cfg.data.source, data_dir=cfg.data.data_dir or None,
                            manual_dir=cfg.data.manual_dir or None)
  train_src, held_src = sources.split_source(src, max_examples=cfg.data.max_examples or None,
                                             heldout_fraction=cfg.data.heldout_fraction,
                                             seed=cfg.data.split_seed)
  if c2c.alignment == "release":
    encoder = chat.ChatEncoder(c2c.receiver.tokenizer, cfg.data.max_len, c2c.aligners,
                               alignment="release",
                               max_runs=cfg.data.get("max_fused_runs", 4))
  else:
    aligners = tuple(align.TokenAligner(c2c.receiver.tokenizer, s.tokenizer,
                                        cfg.get("alignment_strategy", "first"))
                     for s in c2c.sharers)
    encoder = chat.ChatEncoder(c2c.receiver.tokenizer, cfg.data.max_len, aligners,
                               fuse_last=cfg.get("fuse_last", False),
                               fuse_response=cfg.get("fuse_response", False))
  pcfg = pipeline.PipelineConfig(
      batch_size=batch_size, bucket_lengths=tuple(cfg.data.bucket_lengths), seed=seed,
      shuffle=not heldout, num_epochs=1 if heldout else None, drop_remainder=not heldout,
      read_threads=cfg.data.read_threads, worker_count=0 if heldout else cfg.data.worker_count,
      prefetch_batches=cfg.data.prefetch_batches, shard_block=shard_block)
  source = held_src if heldout else train_src
  return pipeline.make_dataset(source, encoder, pcfg), len(source)


def _to_global(batch: Batch, sharding_: NamedSharding, accum: int | None):
  """Host batch [B_host, T] -> global jax arrays ([A, B/A, T] with ``accum``)."""
  def one(x):
    x = np.asarray(x)
    if accum is not None:
      x = x.reshape(accum, x.shape[0] // accum, *x.shape[1:])
    return jax.make_array_from_process_local_data(sharding_, x)
  return jax.tree.map(one, batch)


def _global_split(split: tuple[int, int]) -> tuple[int, int]:
  """Every host compiles the same program: the most conservative split of all hosts."""
  if jax.process_count() == 1:
    return split
  all_ = np.asarray(multihost_utils.process_allgather(np.asarray(split, np.int32)))
  return int(all_[:, 0].min()), int(all_[:, 1].max())


@dataclasses.dataclass
class Sizes:
  micro_batch: int  # global micro-batch (per_device x data-parallel devices)
  accum: int
  total_steps: int


def compute_sizes(cfg, mesh, num_train: int) -> Sizes:
  dp = sharding.data_parallel_size(mesh)
  micro = cfg.per_device_batch_size * dp
  if cfg.global_batch_size % micro:
    raise ValueError(f"global_batch_size {cfg.global_batch_size} is not a multiple of "
                     f"per_device_batch_size x data-parallel devices = {micro}")
  accum = cfg.global_batch_size // micro
  steps = cfg.max_steps if cfg.max_steps > 0 else (
      num_train // cfg.global_batch_size) * cfg.num_epochs
  if steps <= 0:
    raise ValueError(f"{num_train} training examples give no step at global batch "
                     f"{cfg.global_batch_size}; lower global_batch_size or set max_steps")
  return Sizes(micro, accum, steps)


# --- the loop ----------------------------------------------------------------------------------
def train_and_evaluate(cfg: ml_collections.ConfigDict, workdir: str | None = None,
                       stop_after: int | None = None, on_batch=None) -> dict:
  """Runs (or resumes) training; returns the final metrics.

  Args:
    cfg: the config (see ``configs/``).
    workdir: overrides ``cfg.workdir``.
    stop_after: stop after this many steps of *this* call without the final export
      (tests use it to emulate an interruption).
    on_batch: called as ``on_batch(step, host_batch)`` with every batch this process
      reads, before its step (``step`` from 1), e.g. to log what each host read.
  """
  import orbax.checkpoint as ocp
  import grain
  from tqdm import tqdm

  sharding.maybe_initialize_distributed()
  workdir = pathlib.Path(workdir or cfg.workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh(dict(cfg.mesh))
  rng = jax.random.PRNGKey(cfg.seed)
  c2c = build_c2c(cfg, jax.random.fold_in(rng, 1))
  hosts = jax.process_count()
  # Each host reads its own rows of every global micro-batch: the batches do not depend
  # on the number of hosts (see c2cjax.data.pipeline).
  host_micro = max(1, cfg.per_device_batch_size * sharding.data_parallel_size(mesh) // hosts)
  data, num_train = build_data(cfg, c2c, cfg.global_batch_size // hosts, heldout=False,
                               seed=cfg.data.seed, shard_block=host_micro)
  sizes = compute_sizes(cfg, mesh, num_train)
  tx, schedule = make_optimizer(cfg, sizes.total_steps)

  # Shardings: LLM params by logical axes, fuser params FSDP-style, batches over data.
  rparams = c2c.receiver.params
  sparams = tuple(s.params for s in c2c.sharers)
  r_sh = sharding.llm_shardings(c2c.receiver, mesh)
  s_sh = tuple(sharding.llm_shardings(s, mesh) for s in c2c.sharers)
  rparams = jax.device_put(rparams, r_sh)
  sparams = jax.device_put(sparams, s_sh)
  fparams = tuple(f.params for f in c2c.fusers)
  f_sh = sharding.fuser_shardings(fparams, mesh)
  rep = sharding.replicated(mesh)
  state = TrainState(step=jax.device_put(jnp.int32(0), rep), params=jax.device_put(fparams, f_sh),
                     opt_state=None, rng=jax.device_put(jax.random.fold_in(rng, 2), rep))
  opt_sh = optax.tree_map_params(tx, lambda _, sh: sh, jax.eval_shape(tx.init, state.params),
                                 f_sh, transform_non_params=lambda _: rep)  # scalars: replicated
  state = state.replace(opt_state=jax.jit(tx.init, out_shardings=opt_sh)(state.params))
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  micro_sh = NamedSharding(mesh, P(None, sharding.BATCH_AXES))
  flat_sh = sharding.batch_sharding(mesh)

  max_runs = cfg.data.get("max_fused_runs", 4)
  train_step = jax.jit(make_train_step(c2c, tx, max_runs),
                       in_shardings=(state_sh, r_sh, s_sh, micro_sh),
                       out_shardings=(state_sh, rep), donate_argnums=(0,),
                       static_argnums=(4,))  # split: positional (kwargs + in_shardings fail)
  eval_step = jax.jit(make_eval_step(c2c, max_runs), in_shardings=(f_sh, r_sh, s_sh, flat_sh),
                      out_shardings=rep)

  it = iter(data)
  mngr = ocp.CheckpointManager(
      workdir / "checkpoints",
      options=ocp.CheckpointManagerOptions(max_to_keep=cfg.keep_checkpoints, create=True,
                                           enable_async_checkpointing=cfg.async_checkpointing))
  start = 0
  if mngr.latest_step() is not None:
    start = mngr.latest_step()
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = mngr.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(it)))
    state = restored.state
    logging.info("resumed from step %d", start)

  def evaluate() -> dict:
    held, _ = build_data(cfg, c2c, cfg.eval_batch_size, heldout=True, seed=0)
    tot = {"c2c": 0.0, "receiver": 0.0, "tokens": 0.0}
    for i, batch in enumerate(held):
      if cfg.eval_batches and i >= cfg.eval_batches:
        break
      with jax.set_mesh(mesh):
        out = eval_step(state.params, rparams, sparams, _to_global(batch, flat_sh, None))
      for k in tot:
        tot[k] += float(out[k])
    n = max(tot["tokens"], 1.0)
    return {"eval/c2c_loss": tot["c2c"] / n, "eval/receiver_loss": tot["receiver"] / n,
            "eval/tokens": tot["tokens"]}

  log_file = open(workdir / "metrics.jsonl", "a")
  writer = None
  if jax.process_index() == 0 and cfg.tensorboard:
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(str(workdir / "tb"))

  def log(step: int, metrics: dict):
    if jax.process_index() != 0:
      return
    log_file.write(json.dumps({"step": step, **metrics}) + "\n")
    log_file.flush()
    if writer is not None:
      for k, v in metrics.items():
        writer.add_scalar(k, v, step)

  metrics = {}
  bar = tqdm(total=sizes.total_steps, initial=start, desc="c2c train", dynamic_ncols=True,
             disable=jax.process_index() != 0 or not cfg.progress_bar)
  step = start
  t_last, tok_since = time.perf_counter(), 0.0
  while step < sizes.total_steps:
    if stop_after is not None and step - start >= stop_after:
      mngr.wait_until_finished()
      mngr.close()
      log_file.close()
      return {"stopped_at": step}
    host_batch = next(it)
    if on_batch is not None:
      on_batch(step + 1, host_batch)
    tok_since += float(np.sum(host_batch["attention_mask"])) * hosts
    parts = 0 if c2c.alignment == "release" else cfg.get("pass2_parts", 0)
    split = _global_split(pass2_split(host_batch, parts))
    with jax.set_mesh(mesh):  # activation / cache sharding constraints read it
      state, m = train_step(state, rparams, sparams, _to_global(host_batch, micro_sh, sizes.accum),
                            split)
    step += 1
    if step % cfg.log_every == 0 or step == sizes.total_steps:
      m = jax.device_get(m)
      now = time.perf_counter()
      metrics = {"train/loss": float(m["loss"]), "train/lr": float(schedule(step - 1)),
                 "train/grad_norm": float(m["grad_norm"]),
                 "train/temperature": float(m["temperature"]),
                 "train/gate_open": float(m["gate_open"]),
                 "train/tokens_per_s": tok_since / max(now - t_last, 1e-9)}
      t_last, tok_since = now, 0.0
      log(step, metrics)
      bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", lr=f"{metrics['train/lr']:.1e}",
                      gate=f"{metrics['train/gate_open']:.2f}",
                      tok_s=f"{metrics['train/tokens_per_s']:.0f}")
    bar.update(1)
    if cfg.eval_every and (step % cfg.eval_every == 0 or step == sizes.total_steps):
      ev = evaluate()
      log(step, ev)
      bar.write(f"step {step}: held-out loss C2C {ev['eval/c2c_loss']:.4f} vs receiver "
                f"alone {ev['eval/receiver_loss']:.4f}")
      metrics.update(ev)
    if step % cfg.checkpoint_every == 0 or step == sizes.total_steps:
      mngr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                              data=grain.checkpoint.CheckpointSave(it)))
  bar.close()
  mngr.wait_until_finished()
  mngr.close()

  # Final export that c2cjax.fuse / C2C load directly, written by process 0 (gathering the
  # params is a collective: every process takes part).
  params = multihost_utils.process_allgather(state.params, tiled=True)
  if jax.process_index() == 0:
    single = len(params) == 1
    meta = {"receiver": cfg.receiver, "sharers": list(cfg.sharers) if not cfg.self_fusion
            else [cfg.receiver], "self_fusion": bool(cfg.self_fusion), "step": int(step),
            "alignment": cfg.alignment, "layer_map_name": cfg.layer_map,
            "alignment_strategy": cfg.get("alignment_strategy", "first"),
            "fusion_mode": cfg.fusion_mode}
    fuse_lib.save(workdir / "fuser", params[0] if single else params,
                  c2c.fusers[0].config if single else tuple(f.config for f in c2c.fusers),
                  c2c.fusers[0].layer_map if single else tuple(f.layer_map for f in c2c.fusers),
                  meta, overwrite=True)
    final = {"step": step, **metrics}
    (workdir / "final_metrics.json").write_text(json.dumps(final, indent=2))
  log_file.close()
  if writer is not None:
    writer.close()
  return metrics


def main(argv):
  del argv
  from absl import flags, logging as absl_logging
  cfg = flags.FLAGS.config
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
  sharding.maybe_initialize_distributed()
  # A resumed run loads its compiled step; not on several CPU processes, where a restart
  # that loaded its programs from the cache hung in its first gloo collective (jax 0.10).
  if jax.process_count() == 1 or jax.default_backend() != "cpu":
    enable_compilation_cache()
  out = train_and_evaluate(cfg, flags.FLAGS.workdir)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "training config file", lock_config=True)
  flags.DEFINE_string("workdir", None, "overrides config.workdir")
  flags.mark_flags_as_required(["config"])
  app.run(main)
