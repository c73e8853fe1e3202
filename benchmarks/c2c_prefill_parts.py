"""Where C2C's prefill time goes: receiver, sharer and fuser, timed apart (batch as in eval).

    python benchmarks/c2c_prefill_parts.py [--fuser runs/local/fuser] [--questions 64]
        [--batch 8]

With the letter-logits method a query is one prefill, so C2C's time over the receiver's is
this prefill's. Each part is its own ``jax.jit`` on the same left-padded batches of
MMLU-Redux letter prompts (receiver chat template, padded to multiples of 32):
  receiver      the receiver's prefill and last-token logits (the receiver-alone system).
  sharer        the sharer's cache-only prefill of the aligned sharer ids (P - 1 tokens).
  fuse          the fuser on given receiver and sharer caches (the projections and gates).
  c2c           the whole fused prefill (receiver + sharer + fuse + last token).
Also the parts' matmul FLOPs per token (2 x the weights a token meets, embedding and LM
head aside), so the time ratio can be read against the work ratio. A warm-up call per shape compiles first; the median of 3 timed
passes over all batches is reported.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from c2cjax.config_check import count_arg


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--fuser", default="runs/local/fuser")
  ap.add_argument("--questions", type=count_arg(1), default=64)
  ap.add_argument("--batch", type=count_arg(1), default=8)
  args = ap.parse_args()

  from c2cjax import load_model, offline
  from c2cjax import c2c as c2c_lib
  from c2cjax.c2c import C2C
  from c2cjax.evaluation import load_benchmark, mcq_prompt
  from c2cjax.evaluation.answerers import Fused, Solo, bucket, pad_left
  from c2cjax.evaluation.systems import load_fusers

  receiver = load_model(offline.smollm2_gguf())
  sharer = load_model(offline.gemma3_gguf())
  fuser = load_fusers(args.fuser)[0]
  c2c = C2C(receiver, [sharer], [fuser])
  fused = Fused(c2c)
  questions = load_benchmark("mmlu_redux", limit=args.questions, seed=0)
  rows = [fused.encode(mcq_prompt(q, receiver.tokenizer), special=False) for q in questions]
  rows.sort(key=lambda r: -len(r[0]))  # as eval batches them: longest prompts first
  buckets = tuple(range(32, 4097, 32))
  batches = []
  for i in range(0, len(rows), args.batch):
    chunk = rows[i:i + args.batch]
    width = bucket(max(len(r[0]) for r in chunk), buckets)
    batches.append(pad_left(chunk, width, args.batch))
  rparams, sparams, fparams = c2c.params

  solo = Solo(receiver)  # its jit (and compiled shapes) is per model

  def receiver_part(tokens, mask, stoks):
    return solo.prefill(tokens, mask, stoks, max_len=tokens.shape[1])[0]

  @jax.jit
  def sharer_jit(params, stoks, mask):
    b, s = stoks.shape
    return sharer.module_prefill(params, stoks, sharer.init_cache(b, s), mask)

  @jax.jit
  def receiver_cache_jit(params, tokens, mask):  # the fuser's input, not a timed part
    b, s = tokens.shape
    return receiver.module_prefill(params, tokens, receiver.init_cache(b, s), mask)

  @jax.jit
  def fuse_jit(fparams, rcache, scache, mask):
    return c2c_lib.fuse_caches(c2c.spec, (fparams,), rcache, (scache,), mask.astype(bool), (0,))

  inputs = []
  for tokens, mask, (stoks,) in batches:
    t, m, s = jnp.asarray(tokens[:, :-1]), jnp.asarray(mask[:, :-1]), jnp.asarray(stoks[:, :-1])
    rc, sc = receiver_cache_jit(rparams, t, m), sharer_jit(sparams[0], s, m)
    inputs.append((t, m, s, rc, sc))
  parts = {
      "receiver": lambda b, x: receiver_part(*b),
      "sharer": lambda b, x: sharer_jit(sparams[0], x[2], x[1]),
      "fuse": lambda b, x: fuse_jit(fparams[0], x[3], x[4], x[1]),
      "c2c": lambda b, x: fused.prefill(*b, max_len=b[0].shape[1])[0],
  }
  start = time.perf_counter()
  for b, x in zip(batches, inputs):  # warm-up: compile every shape
    for fn in parts.values():
      jax.block_until_ready(fn(b, x))
  warmup_s = time.perf_counter() - start
  passes = {name: [] for name in parts}
  for _ in range(3):
    for name, fn in parts.items():
      t = time.perf_counter()
      for b, x in zip(batches, inputs):
        jax.block_until_ready(fn(b, x))
      passes[name].append(time.perf_counter() - t)

  # Matmul work per token, 2 x the weights each token meets (attention scores aside). Not
  # XLA's cost_analysis: on CPU it counts a scanned layer stack's body once, not per layer.
  def body_params(config, params):  # all weights but the [vocab, d] embedding / LM head
    return sum(x.size for x in jax.tree.leaves(params) if config.vocab_size not in x.shape)

  work = {"receiver": 2 * body_params(receiver.config, rparams),
          "sharer": 2 * body_params(sharer.config, sparams[0]),
          "fuse": 2 * sum(x.size for x in jax.tree.leaves(fparams[0]))}
  work["c2c"] = work["receiver"] + work["sharer"] + work["fuse"]

  nq = len(questions)
  ms = {k: 1e3 * float(np.median(v)) / nq for k, v in passes.items()}
  print(f"date: {datetime.date.today().isoformat()}")
  print(f"machine: {platform.machine()} {platform.processor() or ''}".rstrip() +
        f", {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}")
  print(f"fuser: {args.fuser}, pruned ({len(fuser.layer_map)} layer pairs)")
  print(f"{nq} MMLU-Redux questions (seed 0), letter prompts, batch {args.batch}, "
        f"{len(batches)} batches, prompt {np.mean([len(r[0]) for r in rows]):.0f} tokens mean; "
        f"warm-up (compilation) {warmup_s:.0f} s; median of 3 passes\n")
  print("| part | ms per query | x receiver | GFLOP per token (weights) | x receiver |")
  print("|---|---:|---:|---:|---:|")
  for name in parts:
    print(f"| {name} | {ms[name]:.1f} | {ms[name] / ms['receiver']:.2f} | "
          f"{work[name] / 1e9:.3f} | {work[name] / work['receiver']:.2f} |")


if __name__ == "__main__":
  main()
