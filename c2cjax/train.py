"""Trains a C2C fuser: ``python -m c2cjax.train --config configs/local.py [--config.x=y]``.

Both LLMs are frozen; only the fuser params train (the step: ``c2cjax.train_step``).
Checkpoints (orbax, async, atomic) hold the step, fuser params, optimizer state, rng and
the grain iterator state, so a killed run resumes exactly.

Nothing is silently wrong or lost (see ``c2cjax.rundir``): the config is checked before
anything loads; a resumed run must match its ``manifest.json`` (``--allow_config_change``
admits the fields of ``config_check.SAFE_TO_CHANGE``); a step whose loss, gradient norm or
new params are not finite stops the run (exit 1) before any checkpoint holds it; a finished
run is not rerun. SIGINT (Ctrl-C) or SIGTERM (a preemptible VM's notice) during training
saves the step reached and stops (exit 128 + the signal: 130, 143); the same command
resumes it. Exit codes: 0 done (or already done), 1 stopped by an error, 2 bad config or
flags, 130 / 143 stopped by a signal.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

from c2cjax import align, config_check, files, fuse as fuse_lib, rundir, runtime, sharding
from c2cjax.c2c import C2C, Fuser
from c2cjax.models.identity import identity
from c2cjax.models.load import resolve
from c2cjax.runtime import enable_compilation_cache
from c2cjax.train_step import (Batch, TrainState, c2c_nll, make_eval_step,  # noqa: F401
                               make_optimizer, make_train_step, pass2_split, receiver_nll,
                               token_nll)


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
             strategy=cfg.get("alignment_strategy", "first"), max_len=cfg.data.max_len,
             pairs_at_once=cfg.get("pairs_at_once", 1))


def build_data(cfg, c2c: C2C, batch_size: int, *, heldout: bool, seed: int,
               shard_block: int = 1):
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
                               fuse_response=cfg.get("fuse_response", False),
                               context_len=cfg.data.get("context_len", 0),
                               reply_prefix=cfg.data.get("reply_prefix", ""))
  if encoder.reply_prefix and len(train_src):  # one line now, not a data-worker traceback
    messages = chat.to_messages(train_src[0])
    try:
      encoder.split(messages)
    except ValueError as e:
      raise config_check.ConfigError([f"data.reply_prefix: {e}"]) from e
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


def _agree(split: tuple[int, int], stop: rundir.StopSignals,
           hosts: int) -> tuple[tuple[int, int], bool]:
  """(split, stop) that every process acts on before a step, in one collective: the most
  conservative pass-2 split of all hosts (each compiles the same program) and whether any
  got a stop signal (all stop, and save, at the same step). One process: its own split,
  and no stop (the loop checks its signals before it reads a batch)."""
  if hosts == 1:
    return split, False
  mine = np.asarray([split[0], split[1], stop.signum is not None], np.int32)
  all_ = np.asarray(multihost_utils.process_allgather(mine))
  return (int(all_[:, 0].min()), int(all_[:, 1].max())), bool(all_[:, 2].max())


def _stop_requested(stop: rundir.StopSignals, hosts: int) -> bool:
  """Whether any process got a stop signal; with several processes a collective, so all
  of them stop, and save, at the same step."""
  local = stop.signum is not None
  if hosts == 1:
    return local
  return bool(np.max(multihost_utils.process_allgather(np.int32(local))))


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
                       stop_after: int | None = None, on_batch=None, *,
                       allow_config_change: bool = False,
                       stop: rundir.StopSignals | None = None) -> dict:
  """Runs (or resumes) training; returns the final metrics.

  Args:
    cfg: the config (see ``configs/``); checked first (``config_check.ConfigError``).
    workdir: overrides ``cfg.workdir``.
    stop_after: stop after this many steps of *this* call without the final export
      (tests use it to emulate an interruption).
    on_batch: called as ``on_batch(step, host_batch)`` with every batch this process
      reads, before its step (``step`` from 1), e.g. to log what each host read.
    allow_config_change: a resumed run may differ from its manifest in the fields of
      ``config_check.SAFE_TO_CHANGE`` (run length, logging, checkpointing, layout).
    stop: the stop signals to honour (the CLI holds one over the whole run); by default
      SIGINT / SIGTERM are handled during the training loop only.

  Raises (besides ConfigError): ``rundir.RunDirError`` (the workdir holds a run of another
  config or other models), ``rundir.NonFiniteError``, ``rundir.CheckpointIOError``,
  ``rundir.Interrupted`` (a stop signal in the loop, after saving the step reached).
  """
  import grain
  import orbax.checkpoint as ocp
  from tqdm import tqdm

  config_check.validate_train_config(cfg)
  sharding.maybe_initialize_distributed()
  workdir = rundir.prepare(workdir or cfg.workdir)
  changes = rundir.check_config(workdir, cfg, allow_config_change)
  done = rundir.finished(workdir)
  if done is not None:
    logging.warning("%s: this run already finished at step %s; nothing to do (%s kept). "
                    "Use a new workdir to train again.", workdir, done.get("step"), rundir.FINAL)
    return done
  mesh = sharding.make_mesh(dict(cfg.mesh))
  rng = jax.random.PRNGKey(cfg.seed)
  c2c = build_c2c(cfg, jax.random.fold_in(rng, 1))
  sharer_names = [cfg.receiver] if cfg.self_fusion else list(cfg.sharers)
  models = {"receiver": identity(c2c.receiver, name=cfg.receiver),
            "sharers": [identity(s, name=n) for s, n in zip(c2c.sharers, sharer_names)]}
  rundir.check_models(workdir, models)
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
  # The C2C programs' XLA options (c2cjax.runtime: on CPU, YNNPACK's fusions off where the
  # CPU has AMX, where a local-pair step took 0.80x the time without them; kept elsewhere,
  # where they were faster: RESULTS.md, eighteenth and nineteenth sessions).
  train_step = jax.jit(make_train_step(c2c, tx, max_runs),
                       in_shardings=(state_sh, r_sh, s_sh, micro_sh),
                       out_shardings=(state_sh, rep), donate_argnums=(0,),
                       static_argnums=(4,),  # split: positional (kwargs + in_shardings fail)
                       compiler_options=c2c.xla_options)
  eval_step = jax.jit(make_eval_step(c2c, max_runs), in_shardings=(f_sh, r_sh, s_sh, flat_sh),
                      out_shardings=rep, compiler_options=c2c.xla_options)

  it = iter(data)
  ckpt = rundir.Checkpoints(workdir / "checkpoints", keep=cfg.keep_checkpoints,
                            use_async=cfg.async_checkpointing)
  start = ckpt.latest_step()
  if start:
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    restored = ckpt.restore(start, ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=grain.checkpoint.CheckpointRestore(it)))
    state = restored.state
    logging.info("resumed from step %d", start)
    if not (workdir / rundir.MANIFEST).exists():
      logging.warning("%s has no %s (an older run): its config could not be checked",
                      workdir, rundir.MANIFEST)
  if jax.process_index() == 0:
    rundir.write_manifest(workdir, cfg, models, step=start, changes=changes)

  stop = stop or rundir.StopSignals()

  def evaluate(stoppable: bool) -> dict | None:
    """Held-out losses; None when a stop signal cut it short (``stoppable``)."""
    held, _ = build_data(cfg, c2c, cfg.eval_batch_size, heldout=True, seed=0)
    tot = {"c2c": 0.0, "receiver": 0.0, "tokens": 0.0}
    for i, batch in enumerate(held):
      if cfg.eval_batches and i >= cfg.eval_batches:
        break
      if stoppable and _stop_requested(stop, hosts):  # a preemption notice gives seconds
        return None
      with jax.set_mesh(mesh):
        out = eval_step(state.params, rparams, sparams, _to_global(batch, flat_sh, None))
      for k in tot:
        tot[k] += float(out[k])
    n = max(tot["tokens"], 1.0)
    return {"eval/c2c_loss": tot["c2c"] / n, "eval/receiver_loss": tot["receiver"] / n,
            "eval/tokens": tot["tokens"]}

  guard = rundir.FiniteGuard(ckpt)  # checked before logging stops, evals and saves
  log = rundir.MetricsLog(workdir, start, tensorboard=cfg.tensorboard,
                          enabled=jax.process_index() == 0)
  bar = tqdm(total=sizes.total_steps, initial=start, desc="c2c train", dynamic_ncols=True,
             disable=jax.process_index() != 0 or not cfg.progress_bar)
  def save(step: int, state: TrainState) -> None:  # with the data iterator's position
    ckpt.save(step, ocp.args.Composite(state=ocp.args.StandardSave(state),
                                       data=grain.checkpoint.CheckpointSave(it)))

  def stop_here(step: int, saved: int) -> None:
    """Saves the step reached (with the data position) and raises ``Interrupted``."""
    guard.check()
    if step > saved:
      save(step, state)
    ckpt.close()
    name = (signal.Signals(stop.signum).name if stop.signum else
            "a stop signal to another process")
    kept = (f"saved checkpoint {step}" if step > saved else
            f"no step since checkpoint {saved}" if saved else "no step trained")
    raise rundir.Interrupted(f"{name} at step {step}: {kept}; the same command resumes "
                             f"{workdir}", stop.signum or signal.SIGTERM)

  parts = 0 if c2c.alignment == "release" else cfg.get("pass2_parts", 0)
  step = saved = start
  t_last, tok_since = time.perf_counter(), 0.0
  with stop.deferred():  # a stop signal: the loop saves the step reached, then stops
    try:
      while step < sizes.total_steps:
        if hosts == 1 and stop.signum is not None:
          stop_here(step, saved)
        if stop_after is not None and step - start >= stop_after:
          guard.check()
          ckpt.close()
          return {"stopped_at": step}
        # Several processes: the next batch is read, split and sent to the devices while
        # the previous step runs; one collective then agrees on its split and on stopping.
        # A stop puts the read batch back (the data position saved is before it).
        position = it.get_state() if hosts > 1 else None
        host_batch = next(it)
        device_batch = _to_global(host_batch, micro_sh, sizes.accum)
        split, stopping = _agree(pass2_split(host_batch, parts), stop, hosts)
        if stopping:
          it.set_state(position)
          stop_here(step, saved)
        if on_batch is not None:
          on_batch(step + 1, host_batch)
        tok_since += float(np.sum(host_batch["attention_mask"])) * hosts
        with jax.set_mesh(mesh):  # activation / cache sharding constraints read it
          state, m = train_step(state, rparams, sparams, device_batch, split)
        step += 1
        guard.add(step, m)
        if step % cfg.log_every == 0 or step == sizes.total_steps:
          m = jax.device_get(m)
          now = time.perf_counter()
          metrics = {"train/loss": float(m["loss"]), "train/lr": float(schedule(step - 1)),
                     "train/grad_norm": float(m["grad_norm"]),
                     "train/temperature": float(m["temperature"]),
                     "train/gate_open": float(m["gate_open"]),
                     "train/tokens_per_s": tok_since / max(now - t_last, 1e-9)}
          t_last, tok_since = now, 0.0
          log.log(step, metrics)
          bar.set_postfix(loss=f"{metrics['train/loss']:.3f}", lr=f"{metrics['train/lr']:.1e}",
                          gate=f"{metrics['train/gate_open']:.2f}",
                          tok_s=f"{metrics['train/tokens_per_s']:.0f}")
          guard.check()
        bar.update(1)
        if cfg.eval_every and (step % cfg.eval_every == 0 or step == sizes.total_steps):
          guard.check()
          ev = evaluate(stoppable=step < sizes.total_steps)  # the last step's: finish
          if ev is None:
            continue  # stopped: the loop's top saves this step
          log.log(step, ev)
          bar.write(f"step {step}: held-out loss C2C {ev['eval/c2c_loss']:.4f} vs receiver "
                    f"alone {ev['eval/receiver_loss']:.4f}")
        if step % cfg.checkpoint_every == 0 or step == sizes.total_steps:
          guard.check()  # never save a non-finite state
          save(step, state)
          saved = step
      guard.check()
      ckpt.close()
    except BaseException:
      ckpt.close(quiet=True)  # finish the last good checkpoint's write
      raise
    finally:
      bar.close()
      log.close()

  # Final export that c2cjax.fuse / C2C load directly; final_metrics.json last (atomic).
  final = {"step": step, **log.last}
  # Gathering the params is a collective: every process takes part; process 0 writes.
  params = multihost_utils.process_allgather(state.params, tiled=True)
  if jax.process_index() == 0:
    meta = {"receiver": cfg.receiver, "sharers": sharer_names,
            "self_fusion": bool(cfg.self_fusion), "step": int(step),
            "alignment": cfg.alignment, "layer_map_name": cfg.layer_map,
            "alignment_strategy": cfg.get("alignment_strategy", "first"),
            "fusion_mode": cfg.fusion_mode,
            # how its prompts were fused: evaluation follows (c2cjax.evaluation.systems)
            "fuse_last": bool(cfg.get("fuse_last", False)),
            "reply_prefix": cfg.data.get("reply_prefix", ""),
            "models": models}  # identities: c2cjax.fuse.io.check_models
    try:
      fuse_lib.save(workdir / "fuser", tuple(params), tuple(f.config for f in c2c.fusers),
                    tuple(f.layer_map for f in c2c.fusers), meta, overwrite=True)
      files.atomic_write_text(workdir / rundir.FINAL, files.dumps_strict(final, indent=2))
    except Exception as e:  # rerunning exports again from the last checkpoint
      raise rundir.io_error("exporting the fuser and final metrics", workdir, e,
                            ckpt.dir) from e
  return final


def main(argv):
  del argv
  from absl import flags, logging as absl_logging
  absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it writes at INFO
  sharding.maybe_initialize_distributed()
  # A resumed run loads its compiled step; not on several CPU processes, where a restart
  # that loaded its programs from the cache hung in its first gloo collective (jax 0.10).
  if jax.process_count() == 1 or jax.default_backend() != "cpu":
    enable_compilation_cache()
  try:
    cfg = flags.FLAGS.config
    cfg.keys()  # ml_collections loads the file lazily, here
  except Exception as e:  # pylint: disable=broad-except
    cause = " ".join(str(e.__cause__ or e).split())
    config_check.exit_with(f"c2cjax.train: cannot load --config: {cause}", 2)
  stop = rundir.StopSignals()
  try:
    with stop:
      out = train_and_evaluate(cfg, flags.FLAGS.workdir,
                               allow_config_change=flags.FLAGS.allow_config_change, stop=stop)
  except config_check.ConfigError as e:
    config_check.exit_with(f"c2cjax.train: {e}", 2)
  except (rundir.RunDirError, rundir.NonFiniteError, rundir.CheckpointIOError,
          files.CorruptFileError, OSError) as e:  # OSError: a model or file not readable
    # os._exit for I/O errors: orbax's background threads can hold the exit for minutes.
    config_check.exit_with(f"c2cjax.train: error: {' '.join(str(e).split())}", 1,
                           hard=isinstance(e, rundir.CheckpointIOError))
  except (rundir.Interrupted, KeyboardInterrupt) as e:
    # Interrupted: a stop signal in the training loop, the step reached saved. A
    # KeyboardInterrupt: one outside it (loading, compiling, exporting) or a second signal.
    # os._exit: a normal exit tore the interpreter down under XLA's and the data
    # pipeline's threads and segfaulted; an uncommitted checkpoint is skipped on resume.
    signum = getattr(e, "signum", None) or stop.signum or signal.SIGINT
    workdir = flags.FLAGS.workdir or cfg.get("workdir")
    message = (str(e) if isinstance(e, rundir.Interrupted) else
               f"{signal.Signals(signum).name}: stopped; the same command resumes {workdir} "
               "from its last checkpoint")
    config_check.exit_with(f"c2cjax.train: {message}", 128 + signum, hard=True)
  print(files.dumps_strict(out, indent=2))


if __name__ == "__main__":
  runtime.reexec_with_hugepages()  # a CPU step 8-14% faster at the original code's shape
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file("config", None, "training config file", lock_config=True)
  flags.DEFINE_string("workdir", None, "overrides config.workdir")
  flags.DEFINE_bool("allow_config_change", False, "resume although fields of "
                    "c2cjax.config_check.SAFE_TO_CHANGE (run length, logging, checkpointing, "
                    "device layout) differ from the run's manifest")
  flags.mark_flags_as_required(["config"])
  app.run(main, flags_parser=config_check.flags_parser("c2cjax.train"))
