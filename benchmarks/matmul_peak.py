"""This machine's fp32 matmul throughput under XLA (jitted ``x @ x``, best of ``--reps``).

The compute floor for a training step: e.g. at the original code's shape the fuser alone is
6 x 417M params x 512 fused tokens = 1.28 TFLOP a step (forward and backward), so a step
time below 1.28e12 / (this figure) is out of reach on the machine.

  python benchmarks/matmul_peak.py [--sizes 1024 2048 4096] [--reps 5]
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp

from c2cjax.config_check import count_arg


def gflops(n: int, reps: int) -> float:
  x = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(x).block_until_ready()  # compile
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    f(x).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n**3 / best / 1e9


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", type=count_arg(1), nargs="+", default=[1024, 2048, 4096])
  p.add_argument("--reps", type=count_arg(1), default=5)
  args = p.parse_args()
  if min(args.sizes) < 1 or args.reps < 1:
    p.error(f"--sizes and --reps must be positive, got sizes {args.sizes}, reps {args.reps}")
  print(f"{os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()}; "
        f"load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
  for n in args.sizes:
    print(f"RATIO peak fp32 matmul {n}^3: {gflops(n, args.reps):.0f} GFLOP/s")


if __name__ == "__main__":
  main()
