"""What XLA's own CPU matrix-vector products reach: the ceiling under batch-1 decode.

    python benchmarks/xla_gemv.py            # ~1 min; add XLA_FLAGS=... to try flags

Prints, each against a jitted full-machine read (the bandwidth floor of
``benchmarks/decode.py``): one big matrix-vector product with the matrix stored
``[in, out]`` (c2cjax's layout) and ``[out, in]``; a SmolLM2-135M-sized chain of per-layer
products (30 layers of q, k, v, o, gate, up, down) in fp32, with each product split into
independent pieces, and with bf16 weights; all at batch 1. See benchmarks/RESULTS.md,
issue 16, eighth session.
"""

from __future__ import annotations

import functools
import os
import time

import jax
import jax.numpy as jnp

L, D, F, NH, KH = 30, 576, 1536, 9 * 64, 3 * 64  # SmolLM2-135M


def best(fn, *args, reps: int = 15) -> float:
  jax.block_until_ready(fn(*args))
  out = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    out = min(out, time.perf_counter() - t)
  return out


def chain_seconds(dtype, pieces: int = 1, mode: str = "convert") -> tuple[float, int]:
  """One batch-1 pass over per-layer weights; each product split into ``pieces``; mode
  "out-in" stores each matrix transposed (``[out, in]``, PyTorch's layout)."""
  key = jax.random.PRNGKey(0)
  shapes = dict(q=(D, NH), k=(D, KH), v=(D, KH), o=(NH, D), g=(D, F), u=(D, F), d=(F, D))
  shape = (lambda a, b: (b, a)) if mode == "out-in" else (lambda a, b: (a, b))
  layers = [{n: [(0.02 * jax.random.normal(jax.random.fold_in(key, i), shape(a, b // pieces)))
                 .astype(dtype) for _ in range(pieces)] for n, (a, b) in shapes.items()}
            for i in range(L)]
  nbytes = sum(w.nbytes for layer in layers for ws in layer.values() for w in ws)

  def lin(x, ws):
    if mode == "out-in":
      outs = [jnp.einsum("md,fd->mf", x, w) for w in ws]
    elif mode == "bf16-dot":
      outs = [jnp.dot(x.astype(dtype), w, preferred_element_type=jnp.float32) for w in ws]
    else:
      outs = [x @ w.astype(jnp.float32) for w in ws]
    return jnp.concatenate(outs, -1) if len(outs) > 1 else outs[0]

  def layer(x, w):
    q, k, v = lin(x, w["q"]), lin(x, w["k"]), lin(x, w["v"])
    h = x + 1e-3 * lin(q, w["o"]) + 1e-6 * (k.sum() + v.sum())
    return h + 1e-3 * lin(jax.nn.silu(lin(h, w["g"])) * lin(h, w["u"]), w["d"])

  run = jax.jit(lambda x, ls: functools.reduce(layer, ls, x))
  return best(run, jnp.ones((1, D), jnp.float32), layers), nbytes


def main():
  print(f"{os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}; "
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
  a = jnp.ones((256 * 2**20,), jnp.float32)
  bw = a.nbytes / best(jax.jit(jnp.sum), a)
  print(f"full-machine read (jitted reduction over 1 GiB): {bw / 1e9:.1f} GB/s")
  r, c = D * L * 4, F
  w = jax.random.normal(jax.random.PRNGKey(1), (r, c), jnp.float32)
  wt = jnp.asarray(w.T)
  x = jnp.ones((1, 1, r), jnp.float32)
  for name, f, m in (("[in, out], bsd,df->bsf", lambda x, w: jnp.einsum("bsd,df->bsf", x, w), w),
                     ("[out, in], bsd,fd->bsf", lambda x, w: jnp.einsum("bsd,fd->bsf", x, w), wt)):
    s = best(jax.jit(f), x, m)
    print(f"one {w.nbytes / 2**20:.0f} MiB matrix {name}: {w.nbytes / s / 1e9:.1f} GB/s "
          f"({100 * w.nbytes / s / bw:.0f}% of the read)")
  del w, wt
  for label, dtype, pieces, mode in (("fp32", jnp.float32, 1, "convert"),
                                     ("fp32 stored [out, in]", jnp.float32, 1, "out-in"),
                                     ("fp32, 2 pieces", jnp.float32, 2, "convert"),
                                     ("fp32, 4 pieces", jnp.float32, 4, "convert"),
                                     ("bf16 -> fp32", jnp.bfloat16, 1, "convert"),
                                     ("bf16 dot, fp32 acc.", jnp.bfloat16, 1, "bf16-dot")):
    s, nbytes = chain_seconds(dtype, pieces, mode)
    print(f"SmolLM2-sized chain, {label}: {1e3 * s:.1f} ms ({nbytes / 2**20:.0f} MiB, "
          f"{nbytes / s / 1e9:.1f} GB/s, {100 * nbytes / s / bw:.0f}% of the read)")


if __name__ == "__main__":
  main()
