"""Prefill throughput of ``LM.prefill`` vs transformers' forward on the same model.

    python benchmarks/prefill.py [--model smollm2|gemma3|PATH] [--shapes 8x256 2x1024]
        [--rounds 4] [--ab]

For each ``BxP`` shape: ``B`` rows of ``P`` seeded random token ids (no padding). c2cjax
runs ``LM.prefill`` (the jitted program eval and C2C use: every prompt token into the
cache, logits after the last one); transformers runs its forward with
``logits_to_keep=1`` under ``torch.inference_mode``, fp32, on all cores. The two alternate
for ``--rounds`` paired rounds in this process after a warm-up each; the script prints
each side's median, tokens/s and the ratio, and the largest logit difference.

It also times the products alone: one jitted chain of ``[B * P, in] x [in, out]`` matmuls
over every weight matrix of the layers (what the prefill cannot go below with XLA's CPU
matmuls), with its GFLOP/s.

``--ab`` adds a third side: c2cjax with its attention contracted directly from the
``[B, S, K, G, H]`` queries, as before the eighteenth session (``direct_attention`` and, past
512 slots, ``direct_chunked_attention`` below), in paired rounds with the rest.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np


def direct_attention(q, k, v, mask, *, scale: float, softcap: float | None = None):
  """The einsum attention as it was before the eighteenth session."""
  from c2cjax.models import attention
  b, s, kh, g, h = q.shape
  logits = jnp.einsum("bskgh,bkth->bkgst", q, k.astype(q.dtype),
                      preferred_element_type=jnp.float32) * scale
  if softcap:
    logits = jnp.tanh(logits / softcap) * softcap
  logits = jnp.where(mask[:, None, None], logits, attention.NEG_INF)
  probs = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
  out = jnp.einsum("bkgst,bkth->bskgh", probs, v.astype(q.dtype))
  return out.reshape(b, s, kh * g, h)


def direct_chunked_attention(q, k, v, mask, *, scale: float, softcap: float | None = None,
                             block: int = 512):
  """The chunked attention as it was before the eighteenth session: key blocks of
  ``block`` slots, online softmax, contracted directly from ``[B, S, K, G, H]``."""
  from c2cjax.models import attention
  b, s, kh, g, h = q.shape
  nb = -(-k.shape[2] // block)
  pad = ((0, 0), (0, 0), (0, nb * block - k.shape[2]), (0, 0))
  kb, vb = (jnp.pad(x, pad).reshape(b, kh, nb, block, h).transpose(2, 0, 1, 3, 4)
            for x in (k, v))
  mb = jnp.pad(mask, ((0, 0), (0, 0), pad[2])).reshape(b, s, nb, block).transpose(2, 0, 1, 3)

  @jax.checkpoint
  def body(carry, xs):
    m, l, acc = carry
    kc, vc, mc = xs
    logits = jnp.einsum("bskgh,bkch->bkgsc", q, kc.astype(q.dtype),
                        preferred_element_type=jnp.float32) * scale
    if softcap:
      logits = jnp.tanh(logits / softcap) * softcap
    logits = jnp.where(mc[:, None, None], logits, attention.NEG_INF)
    m_new = jnp.maximum(m, logits.max(-1))
    e, corr = jnp.exp(logits - m_new[..., None]), jnp.exp(m - m_new)
    pv = jnp.einsum("bkgsc,bkch->bkgsh", e, vc.astype(jnp.float32))
    return (m_new, l * corr + e.sum(-1), acc * corr[..., None] + pv), None

  init = (jnp.full((b, kh, g, s), attention.NEG_INF), jnp.zeros((b, kh, g, s)),
          jnp.zeros((b, kh, g, s, h)))
  (_, l, acc), _ = jax.lax.scan(body, init, (kb, vb, mb))
  return (acc / l[..., None]).transpose(0, 3, 1, 2, 4).reshape(b, s, kh * g, h).astype(q.dtype)


def matmul_chain_seconds(params, hidden: int, rows: int, reps: int = 3) -> tuple[float, float]:
  """(seconds, FLOPs) of one chain of ``[rows, in] x [in, out]`` products over every layer
  weight matrix of ``params`` (per-layer arrays, the unscanned layout; the embedding and
  LM head excluded: prefill computes one position's logits), each product waiting for the
  previous one's sum."""
  mats = [w.reshape(hidden, -1) if w.shape[0] == hidden else w.reshape(-1, w.shape[-1])
          for path, w in jax.tree_util.tree_leaves_with_path(params)
          if w.ndim >= 2 and "embed" not in jax.tree_util.keystr(path)]
  flops = sum(2 * rows * m.shape[0] * m.shape[1] for m in mats)

  @jax.jit
  def chain(ms):
    acc = jnp.zeros((), jnp.float32)
    for m in ms:
      x = jnp.full((rows, m.shape[0]), 1.0 + 1e-9 * acc, jnp.float32)
      acc = acc + jnp.sum(x @ m)
    return acc

  jax.block_until_ready(chain(mats))
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(chain(mats))
    best = min(best, time.perf_counter() - t)
  return best, flops


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--model", default="smollm2", help="smollm2, gemma3 or a GGUF/HF path")
  ap.add_argument("--shapes", nargs="+", default=["8x256", "2x1024"], help="BxP")
  ap.add_argument("--rounds", type=int, default=4)
  ap.add_argument("--ab", action="store_true", help="also the pre-eighteenth attention")
  args = ap.parse_args()
  shapes = []
  for text in args.shapes:
    try:
      b, p = (int(x) for x in text.lower().split("x"))
    except ValueError:
      ap.error(f"--shapes: {text!r} is not BxP (e.g. 8x256)")
    if b < 1 or p < 2:
      ap.error(f"--shapes: {text!r} needs B >= 1 and P >= 2")
    shapes.append((b, p))
  if args.rounds < 1:
    ap.error(f"--rounds must be >= 1, got {args.rounds}")
  if args.model not in ("smollm2", "gemma3") and not pathlib.Path(args.model).exists():
    ap.error(f"--model: {args.model!r} is neither smollm2, gemma3 nor an existing path")

  import torch
  import transformers as tf

  from c2cjax import load_model, offline
  from c2cjax.models import attention, lm as lm_lib

  path = pathlib.Path({"smollm2": offline.smollm2_gguf, "gemma3": offline.gemma3_gguf}.get(
      args.model, lambda: args.model)())
  lm = load_model(path)
  kw = dict(gguf_file=path.name) if str(path).endswith(".gguf") else {}
  hf = tf.AutoModelForCausalLM.from_pretrained(str(path.parent if kw else path), **kw,
                                               dtype=torch.float32).eval()
  torch.set_num_threads(os.cpu_count())
  flat = lm.with_layout(scan_layers=False).params
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__}, torch {torch.__version__}; model {path.name}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")

  for b, p in shapes:
    rng = np.random.default_rng(0)
    ids = rng.integers(100, lm.config.vocab_size - 1, (b, p)).astype(np.int32)
    mask = np.ones_like(ids)
    sides = {"c2cjax": lambda: lm.prefill(ids, mask, max_len=p)[0]}
    if args.ab:
      real = attention.einsum_attention, attention.chunked_attention
      attention.einsum_attention = direct_attention
      attention.chunked_attention = direct_chunked_attention
      try:  # its own program, compiled while the old forms are in place
        old = jax.jit(lambda prm, t, m: lm_lib.prefill(lm.module, prm, t, m, p),
                      compiler_options=lm.xla_options).lower(lm.params, ids, mask).compile()
      finally:
        attention.einsum_attention, attention.chunked_attention = real
      sides["c2cjax-direct"] = lambda: old(lm.params, ids, mask)[0]
    tt, tm = torch.tensor(ids, dtype=torch.long), torch.tensor(mask)

    def torch_side():
      with torch.inference_mode():
        return hf(input_ids=tt, attention_mask=tm, logits_to_keep=1).logits[:, -1]
    sides["transformers"] = torch_side
    outs = {n: np.asarray(jax.block_until_ready(f()) if n != "transformers" else f())
            for n, f in sides.items()}  # warm-up / compile
    times = {n: [] for n in sides}
    names = list(sides)
    for r in range(args.rounds):
      for n in names[r % len(names):] + names[:r % len(names)]:
        t = time.perf_counter()
        jax.block_until_ready(sides[n]())
        times[n].append(time.perf_counter() - t)
    med = {n: statistics.median(v) for n, v in times.items()}
    chain_s, flops = matmul_chain_seconds(flat, lm.config.hidden_size, b * p)
    print(f"\n{b} x {p} tokens, {args.rounds} paired rounds (median s, tokens/s):")
    for n in names:
      print(f"  {n:14s} {med[n]:7.3f} s  {b * p / med[n]:8.0f} tok/s  "
            f"({' '.join(f'{x:.2f}' for x in times[n])})")
    print(f"  layer products alone (one jitted chain): {chain_s:.3f} s, "
          f"{flops / chain_s / 1e9:.0f} GFLOP/s; c2cjax's prefill is {chain_s / med['c2cjax']:.0%} "
          "products")
    diff = float(np.abs(outs["c2cjax"] - outs["transformers"]).max())
    print(f"  max |logit difference| c2cjax vs transformers: {diff:.2e}")
    print(f"RATIO prefill {b}x{p}: c2cjax {med['transformers'] / med['c2cjax']:.2f}x "
          "transformers' tokens/s" + (f"; the direct attention form took "
                                      f"{med['c2cjax-direct'] / med['c2cjax']:.2f}x as long"
                                      if args.ab else ""))


if __name__ == "__main__":
  main()
