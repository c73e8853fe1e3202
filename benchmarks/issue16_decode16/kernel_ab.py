"""Paired A/B in one process: the CPU matrix-vector kernel built from two sources, over
SmolLM2-135M's batch-1 decode products (30 layers x q, k, v, o, gate, up, down, then the
tied LM head read in place), fp32 and bf16 weights, random values. Alternates which build
runs first for 12 rounds; prints both medians and the median of per-round differences.

  git show <rev>:c2cjax/kernels/cpu_matvec.cc > /tmp/old.cc
  INC=$(python -c "import jax.ffi; print(jax.ffi.include_dir())")
  c++ -O3 -std=c++17 -shared -fPIC -w -march=native -I$INC /tmp/old.cc -o /tmp/old.so
  python benchmarks/issue16_decode16/kernel_ab.py /tmp/old.so \
      $(python -c "from c2cjax.kernels import matvec; print(matvec.build())")
"""
import ctypes
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

D, F, KV, V, L = 576, 1536, 192, 49152, 30  # SmolLM2-135M


def main(old: str, new: str, rounds: int = 12):
  for tag, path in (("old", old), ("new", new)):
    lib = ctypes.CDLL(path)
    jax.ffi.register_ffi_target(f"ab_{tag}_f32", jax.ffi.pycapsule(lib.C2cjaxCpuMatVec),
                                platform="cpu")
    jax.ffi.register_ffi_target(f"ab_{tag}_bf16", jax.ffi.pycapsule(lib.C2cjaxCpuMatVecBf16),
                                platform="cpu")
  rng = np.random.default_rng(0)

  def weight(shape, dtype):
    return jnp.asarray(rng.standard_normal(shape, dtype=np.float32) / shape[0] ** .5).astype(dtype)

  def product(tag, x, w, out_in):
    n = w.shape[0] if out_in else w.shape[1]
    target = f"ab_{tag}_{'bf16' if w.dtype == jnp.bfloat16 else 'f32'}"
    return jax.ffi.ffi_call(target, jax.ShapeDtypeStruct((1, n), jnp.float32))(
        x, w, out_in=out_in, blocks_per_thread=np.int64(1))

  def chain(tag):
    def f(x, layers, emb):  # dependent products, as in a decode step
      for l in layers:
        q, k, v = (product(tag, x, l[n], False) for n in "qkv")
        h = product(tag, q + jnp.pad(k + v, ((0, 0), (0, D - KV))), l["o"], False)
        a = product(tag, h, l["g"], False) * product(tag, h, l["u"], False)
        x = x + product(tag, jnp.tanh(a), l["d"], False)
      return product(tag, x, emb, True)
    return jax.jit(f)

  for dtype in (jnp.float32, jnp.bfloat16):
    shapes = dict(q=(D, D), k=(D, KV), v=(D, KV), o=(D, D), g=(D, F), u=(D, F), d=(F, D))
    layers = [{n: weight(s, dtype) for n, s in shapes.items()} for _ in range(L)]
    emb = weight((V, D), dtype)
    nbytes = sum(w.nbytes for l in layers for w in l.values()) + emb.nbytes
    fns = {t: chain(t) for t in ("old", "new")}
    x = jnp.full((1, D), .1)
    outs = {t: np.asarray(f(x, layers, emb)) for t, f in fns.items()}
    name = jnp.dtype(dtype).name
    print(f"{name}: max |old - new| / max |old| = "
          f"{np.abs(outs['old'] - outs['new']).max() / np.abs(outs['old']).max():.2e}")
    times = {t: [] for t in fns}
    for r in range(rounds):
      for t in (("old", "new") if r % 2 == 0 else ("new", "old")):
        best = np.inf
        for _ in range(5):
          start = time.perf_counter()
          fns[t](x, layers, emb).block_until_ready()
          best = min(best, time.perf_counter() - start)
        times[t].append(best)
    o, n = np.array(times["old"]), np.array(times["new"])
    print(f"{name}: {nbytes / 2**20:.0f} MiB; old {np.median(o) * 1e3:.2f} ms "
          f"({nbytes / np.median(o) / 1e9:.1f} GB/s), new {np.median(n) * 1e3:.2f} ms "
          f"({nbytes / np.median(n) / 1e9:.1f} GB/s); old minus new, median "
          f"{np.median(o - n) * 1e3:+.2f} ms; new faster in {(n < o).sum()} of {rounds}",
          flush=True)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2])
