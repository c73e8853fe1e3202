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
import functools
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
from jax.sharding import NamedSharding, PartitionSpec as P

from c2cjax import align, fuse as fuse_lib, sharding, sharer_context
from c2cjax.c2c import C2C, Fuser
from c2cjax.models.load import resolve
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
  logp = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1)[..., 0]
  w = loss_mask[:, 1:].astype(jnp.float32)
  return jnp.sum(nll * w), jnp.sum(w)


def c2c_nll(c2c: C2C, fparams, rparams, sparams, batch: Batch, *, train: bool, rng=None,
            step=0):
  """Receiver loss on the response tokens, reading a cache fused on the prompt tokens.

  Pass 1 prefills receiver and sharers on the whole sequence and fuses the ``fuse_mask``
  slots; pass 2 reruns the receiver over the sequence on that cache, keeping the fused
  slots (``keep``) and computing fresh keys/values elsewhere: exactly what the last prompt
  token and the response see in C2C generation.
  """
  tokens, mask = batch["receiver_ids"], batch["attention_mask"]
  sharer_ids = batch["sharer_ids"]  # a tuple: one [B, T] per sharer
  fuse_mask = batch["fuse_mask"].astype(bool) & mask.astype(bool)
  sharer_masks = None
  if "sharer_context_ids" in batch:  # each sharer reads its private context first
    joined = [sharer_context.join(c, m, ids, mask) for c, m, ids in zip(
        batch["sharer_context_ids"], batch["sharer_context_mask"], sharer_ids)]
    sharer_ids = tuple(ids for ids, _ in joined)
    sharer_masks = tuple(m for _, m in joined)
  cache = c2c.fused_cache(rparams, sparams, fparams, tokens, mask, sharer_ids, fuse_mask,
                          tuple(range(len(c2c.sharers))), train=train, rng=rng, step=step,
                          sharer_masks=sharer_masks)
  logits, _ = c2c.receiver.module_apply(rparams, tokens, cache.replace(end=jnp.int32(0)),
                                        keep=fuse_mask)
  return token_nll(logits, tokens, batch["loss_mask"])


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


def make_train_step(c2c: C2C, tx):
  """``(state, rparams, sparams, batch [A, B, T]) -> (state, metrics)``; jit it."""

  def step_fn(state: TrainState, rparams, sparams, batch: Batch):
    rng = jax.random.fold_in(state.rng, state.step)

    def micro(carry, xs):
      grads, loss, count = carry
      mb, i = xs
      key = jax.random.fold_in(rng, i)

      def f(fparams):
        s, n = c2c_nll(c2c, fparams, rparams, sparams, mb, train=True, rng=key,
                       step=state.step)
        return s, n

      (s, n), g = jax.value_and_grad(f, has_aux=True)(state.params)
      grads = jax.tree.map(jnp.add, grads, g)
      return (grads, loss + s, count + n), None

    accum = batch["receiver_ids"].shape[0]
    zeros = jax.tree.map(jnp.zeros_like, state.params)
    (grads, loss, count), _ = jax.lax.scan(
        micro, (zeros, jnp.float32(0), jnp.float32(0)), (batch, jnp.arange(accum)))
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss / denom, "tokens": count, "grad_norm": optax.global_norm(grads),
               "temperature": fuse_lib.temperature(c2c.fusers[0].config, state.step)}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step_fn


def make_eval_step(c2c: C2C):
  def eval_fn(fparams, rparams, sparams, batch: Batch):
    s, n = c2c_nll(c2c, fparams, rparams, sparams, batch, train=False)
    r, _ = receiver_nll(c2c, rparams, batch)
    return {"c2c": s, "receiver": r, "tokens": n}
  return eval_fn


# --- setup -----------------------------------------------------------------------------------
def _dtype(name: str):
  return {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[name]


def build_c2c(cfg: ml_collections.ConfigDict, rng) -> C2C:
  """Loads the frozen LLMs and initialises one fuser per sharer."""
  dtype = _dtype(cfg.llm_dtype)
  receiver = resolve(cfg.receiver, dtype, seed=cfg.seed, remat=cfg.remat)
  if cfg.self_fusion:  # ablation: the receiver's own cache plays the sharer
    sharers = [receiver]
  else:
    sharers = [resolve(s, dtype, seed=cfg.seed + 1 + i) for i, s in enumerate(cfg.sharers)]
  fusers = [Fuser.init(receiver, s, jax.random.fold_in(rng, i), cfg.layer_map,
                       **dict(cfg.fuser)) for i, s in enumerate(sharers)]
  return C2C(receiver, sharers, fusers, mode=cfg.fusion_mode, alignment=cfg.alignment,
             max_len=cfg.data.max_len)


def build_data(cfg, c2c: C2C, batch_size: int, *, heldout: bool, seed: int):
  from c2cjax.data import chat, pipeline, sources
  load = functools.partial(sources.load_source, cfg.data.source,
                           data_dir=cfg.data.data_dir or None,
                           manual_dir=cfg.data.manual_dir or None)
  held_split = cfg.data.get("heldout_split", "")
  if held_split:  # the source's own held-out split (synthetic_docs: disjoint entities)
    train_src, _ = sources.split_source(load(), max_examples=cfg.data.max_examples or None,
                                        heldout_fraction=0.0)
    held_src = load(split=held_split)
  else:
    train_src, held_src = sources.split_source(load(), max_examples=cfg.data.max_examples or None,
                                               heldout_fraction=cfg.data.heldout_fraction,
                                               seed=cfg.data.split_seed)
  aligners = tuple(align.TokenAligner(c2c.receiver.tokenizer, s.tokenizer, cfg.alignment)
                   for s in c2c.sharers)
  encoder = chat.ChatEncoder(c2c.receiver.tokenizer, cfg.data.max_len, aligners,
                             fuse_last=cfg.get("fuse_last", False),
                             fuse_response=cfg.get("fuse_response", False),
                             context_len=cfg.data.get("context_len", 0))
  pcfg = pipeline.PipelineConfig(
      batch_size=batch_size, bucket_lengths=tuple(cfg.data.bucket_lengths), seed=seed,
      shuffle=not heldout, num_epochs=1 if heldout else None, drop_remainder=not heldout,
      read_threads=cfg.data.read_threads, worker_count=0 if heldout else cfg.data.worker_count,
      prefetch_batches=cfg.data.prefetch_batches)
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


def _gate_openness(params) -> float:
  vals = [float(fuse_lib.gate_openness(p)["all"]) for p in params]
  return float(np.mean(vals)) if vals else 0.0


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
                       stop_after: int | None = None) -> dict:
  """Runs (or resumes) training; returns the final metrics.

  Args:
    cfg: the config (see ``configs/``).
    workdir: overrides ``cfg.workdir``.
    stop_after: stop after this many steps of *this* call without the final export
      (tests use it to emulate an interruption).
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
  data, num_train = build_data(cfg, c2c, cfg.global_batch_size // hosts, heldout=False,
                               seed=cfg.data.seed)
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
  state = TrainState(step=jnp.int32(0), params=jax.device_put(fparams, f_sh),
                     opt_state=None, rng=jax.random.fold_in(rng, 2))
  state = state.replace(opt_state=jax.jit(tx.init, out_shardings=None)(state.params))
  state_sh = jax.tree.map(lambda x: x.sharding, state)
  rep = sharding.replicated(mesh)
  micro_sh = NamedSharding(mesh, P(None, sharding.BATCH_AXES))
  flat_sh = sharding.batch_sharding(mesh)

  train_step = jax.jit(make_train_step(c2c, tx), in_shardings=(state_sh, r_sh, s_sh, micro_sh),
                       out_shardings=(state_sh, rep), donate_argnums=(0,))
  eval_step = jax.jit(make_eval_step(c2c), in_shardings=(f_sh, r_sh, s_sh, flat_sh),
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
    tok_since += float(np.sum(host_batch["attention_mask"])) * hosts
    state, m = train_step(state, rparams, sparams, _to_global(host_batch, micro_sh, sizes.accum))
    step += 1
    if step % cfg.log_every == 0 or step == sizes.total_steps:
      m = jax.device_get(m)
      now = time.perf_counter()
      metrics = {"train/loss": float(m["loss"]), "train/lr": float(schedule(step - 1)),
                 "train/grad_norm": float(m["grad_norm"]),
                 "train/temperature": float(m["temperature"]),
                 "train/gate_open": _gate_openness(jax.device_get(state.params)),
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

  # Final export that c2cjax.fuse / C2C load directly.
  if jax.process_index() == 0:
    params = jax.device_get(state.params)
    single = len(params) == 1
    meta = {"receiver": cfg.receiver, "sharers": list(cfg.sharers) if not cfg.self_fusion
            else [cfg.receiver], "self_fusion": bool(cfg.self_fusion), "step": int(step),
            "alignment": cfg.alignment, "fusion_mode": cfg.fusion_mode}
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
  enable_compilation_cache()  # a resumed run loads its compiled step
  out = train_and_evaluate(cfg, flags.FLAGS.workdir)
  print(json.dumps(out, indent=2))


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "training config file", lock_config=True)
  flags.DEFINE_string("workdir", None, "overrides config.workdir")
  flags.mark_flags_as_required(["config"])
  app.run(main)
