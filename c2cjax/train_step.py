"""The training step: losses, optimizer and the compiled step functions of ``c2cjax.train``.

Both LLMs are frozen (they are arguments of the step, never differentiated, never in the
optimizer); only the fuser params train. One optimizer step = one compiled call that
scans over ``accum`` micro-batches and averages the gradient over every response token
of the global batch, so the result does not depend on how the batch is split across
devices or micro-batches.
"""

from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from c2cjax import c2c as c2c_lib, fuse as fuse_lib, sharding, sharer_context
from c2cjax.c2c import C2C
from c2cjax.models import lm as lm_lib
from c2cjax.models.head_nll import head_nll
from c2cjax.release_prefill import release_prefill, run_index

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
  Both are multiples of ``g = T // parts``, or ``start = fused_end - 1``: the prompt's last
  token (its logits predict the first target) right before a fused prefix that ends on a
  multiple of ``g``, as when every row's prompt has that length (rounding down would rerun
  ``g - 1`` more slots for that one token). A bucket compiles at most
  ``parts * (parts + 1) / 2 + parts`` variants. Not every ``start`` one slot before a
  multiple: on ``configs/local.py``'s data that added 8 compiled variants to 17 in 500
  batches to save 1.4% of pass 2's tokens (RESULTS.md, twenty-fifth session).
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
  return (start if start == fused_end - 1 else (start // g) * g), fused_end


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
  With ``sharer_context_ids`` / ``sharer_context_mask`` in the batch (offsets scheme), each
  sharer reads its private context before its aligned ids (``c2cjax.sharer_context``).
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
  head = lambda x: x[:, :x.shape[1] - t + fused_end]  # sharer rows: [B, C + T] with a context
  sharer_masks = None
  if "sharer_context_ids" in batch:  # each sharer reads its private context first
    joined = [sharer_context.join(c, m, ids, mask) for c, m, ids in zip(
        batch["sharer_context_ids"], batch["sharer_context_mask"], sharer_ids)]
    sharer_ids = tuple(ids for ids, _ in joined)
    sharer_masks = tuple(head(m) for _, m in joined)
  with jax.named_scope("pass1_prefill_fuse"):
    cache = c2c.fused_cache(rparams, sparams, fparams, head(tokens), head(mask),
                            tuple(head(x) for x in sharer_ids), head(fuse_mask),
                            tuple(range(len(c2c.sharers))), train=train, rng=rng, step=step,
                            sharer_masks=sharer_masks)
    if fused_end < t:
      cache = cache.pad_to(t)
    cache = cache.replace(k=sharding.constrain(cache.k, sharding.CACHE),
                          v=sharding.constrain(cache.v, sharding.CACHE))
  with jax.named_scope("pass2_receiver"):
    hidden, _ = lm_lib.forward(c2c.receiver.module, rparams, tokens[:, start:],
                               cache.replace(end=jnp.int32(start)), keep=fuse_mask,
                               return_hidden=True)
  with jax.named_scope("loss"):  # chunked through the frozen head: no [B, S, V] logits
    return head_nll(c2c.receiver.config, rparams, hidden, tokens[:, start:],
                    batch["loss_mask"][:, start:])


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
  tx = optax.chain(clip_by_global_norm(o.grad_clip),
                   optax.adamw(schedule, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay))
  return tx, schedule


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
  """Scales the gradients by ``min(1, max_norm / (norm + 1e-6))``, ``norm`` their global
  L2 norm: ``torch.nn.utils.clip_grad_norm_``'s rule, as the released code trains.

  Not ``optax.clip_by_global_norm``: it selects between ``g`` and ``g / norm * max_norm``,
  and XLA materialises the divided copy of every gradient for Adam's two moment updates
  (one more write and two more reads of all params a step: ~0.1 s of the original code's
  shape on CPU, RESULTS.md twenty-first session). A scalar factor fuses into them. Its
  state is optax's ``EmptyState``, as optax's clip has, so checkpoints resume across both.
  """
  def update_fn(updates, state, params=None):
    del params
    norm = optax.tree.norm(updates)
    scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
    return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

  return optax.GradientTransformation(optax.init_empty_state, update_fn)


def all_finite(tree) -> jax.Array:
  """[] bool: no leaf of ``tree`` (floating point) holds a NaN or an inf.

  ``sum(x - x)`` is 0 when every element is finite and NaN otherwise, with no overflow: one
  read of each leaf. Measured on CPU over four [30, 1024, 1024] leaves: 15 ms, against 60 ms
  for ``sum(x * 0)`` (XLA's reduction fusion multiplied by a materialised array of zeros)
  and 70 ms for ``all(isfinite(x))`` (a test, then a reduction). Not ``max(|x|)``: XLA:CPU's
  max reduction dropped a NaN.
  """
  zero = jax.tree.reduce(jnp.add, jax.tree.map(lambda x: jnp.sum(x - x, dtype=jnp.float32), tree),
                         jnp.float32(0))
  return jnp.isfinite(zero)


def make_train_step(c2c: C2C, tx, max_runs: int = 4):
  """``(state, rparams, sparams, batch [A, B, T], split=None) -> (state, metrics)``.

  Jit it with ``split`` static (:func:`pass2_split`) and the state donated. Metrics stay
  on device (the loop reads them every ``log_every`` steps), gate openness included, so
  the loop never copies the fuser to the host. ``metrics["finite"]`` is False when the
  loss, the gradient norm or any new param is not finite (NaN or inf).
  """

  def step_fn(state: TrainState, rparams, sparams, batch: Batch, split=None):
    rng = jax.random.fold_in(state.rng, state.step)

    def loss_and_grad(mb, key, mean: bool):
      """((objective, (summed NLL, target count)), fuser grads) of one micro-batch."""
      def f(fparams):
        s, n = c2c_nll(c2c, fparams, rparams, sparams, mb, train=True, rng=key,
                       step=state.step, split=split, max_runs=max_runs)
        # mean: the backward scales its seed by 1 / count instead of a pass over every
        # gradient afterwards (417M params at the original code's shape: ~0.07 s a step on
        # CPU). The count does not depend on the params.
        return (s / jnp.maximum(jax.lax.stop_gradient(n), 1.0) if mean else s), (s, n)
      return jax.value_and_grad(f, has_aux=True)(state.params)

    accum = batch["receiver_ids"].shape[0]
    if accum == 1:  # no scan, no zero-initialised gradient carry, the mean differentiated
      (_, (loss, count)), grads = loss_and_grad(jax.tree.map(lambda x: x[0], batch),
                                                jax.random.fold_in(rng, 0), mean=True)
    else:
      def micro(carry, xs):
        grads, loss, count = carry
        mb, i = xs
        (_, (s, n)), g = loss_and_grad(mb, jax.random.fold_in(rng, i), mean=False)
        return (jax.tree.map(jnp.add, grads, g), loss + s, count + n), None

      zeros = jax.tree.map(jnp.zeros_like, state.params)
      (grads, loss, count), _ = jax.lax.scan(
          micro, (zeros, jnp.float32(0), jnp.float32(0)), (batch, jnp.arange(accum)))
    denom = jnp.maximum(count, 1.0)
    if accum > 1:
      grads = jax.tree.map(lambda g: g / denom, grads)
    with jax.named_scope("optimizer"):
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    gates = [fuse_lib.gate_openness(p)["all"] for p in params]
    loss, grad_norm = loss / denom, optax.tree.norm(grads)
    # The finite-loss guard: the host reads this flag before any checkpoint or export.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
    metrics = {"loss": loss, "tokens": count, "grad_norm": grad_norm, "finite": finite,
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
