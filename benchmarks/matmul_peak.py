"""This machine's fp32 matmul throughput under XLA (jitted ``x @ y``, best of ``--reps``).

The compute floor for a training step: e.g. at the original code's shape the fuser alone is
6 x 417M params x 512 fused tokens = 1.28 TFLOP a step (forward and backward), so a step
time below 1.28e12 / (this figure) is out of reach on the machine.

  python benchmarks/matmul_peak.py [--sizes 1024 2048 4096] [--reps 5]
  python benchmarks/matmul_peak.py --shapes steps --torch    # XLA beside PyTorch

``--shapes`` times ``[M, K] x [K, N]`` products given as ``MxKxN`` (or ``steps``: the
products the training steps are made of, listed in ``STEP_SHAPES``) instead of the square
``--sizes``. ``--torch`` times PyTorch's ``a @ b`` on the same operands too (all cores,
alternating with XLA rep by rep, so both see the same machine) and prints their ratio:
both training steps are mostly these products, so where the two libraries run them at the
same rate, no step of the same computation can be much faster than the other's.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

import jax
import jax.numpy as jnp

from c2cjax.config_check import count_arg

# The products the training steps spend their time in ([M, K] x [K, N]): the local pair's
# LLM layers at 256 and 512 rows (SmolLM2-135M: hidden 576, MLP 1536; Gemma-3-270M: hidden
# 640, MLP 2048) and the receiver's LM head (vocabulary 49,152); the original code's fuser
# (hidden 1024, 512 fused tokens a step) forward and its weight gradient.
STEP_SHAPES = {
    "local LLM up": (512, 576, 1536), "local LLM down": (512, 1536, 576),
    "local LLM attn": (256, 576, 576), "local sharer up": (256, 640, 2048),
    "local LM head": (512, 576, 49152), "fuser fwd": (512, 1024, 1024),
    "fuser weight grad": (1024, 512, 1024), "square 2048": (2048, 2048, 2048),
}


def shape_arg(text: str) -> tuple[int, int, int]:
  m = re.fullmatch(r"(\d+)x(\d+)x(\d+)", text)
  if not m or min(int(g) for g in m.groups()) < 1:
    raise argparse.ArgumentTypeError(
        f"{text!r} is not MxKxN with three positive integers (e.g. 512x1024x1024) or 'steps'")
  return tuple(int(g) for g in m.groups())


def timer(fn):
  """``(once, best)``: ``once()`` times one call of ``fn``; ``best[0]`` is the fastest yet."""
  best = [float("inf")]

  def once():
    t = time.perf_counter()
    fn()
    best[0] = min(best[0], time.perf_counter() - t)
  return once, best


def rates(m: int, k: int, n: int, reps: int, with_torch: bool) -> dict[str, float]:
  """GFLOP/s of ``[m, k] x [k, n]`` under XLA (and PyTorch), reps alternating."""
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (m, k), jnp.float32)
  b = jax.random.normal(kb, (k, n), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, b).block_until_ready()  # compile
  sides = {"xla": timer(lambda: f(a, b).block_until_ready())}
  if with_torch:
    import numpy as np  # pylint: disable=import-outside-toplevel
    import torch  # pylint: disable=import-outside-toplevel
    torch.set_num_threads(os.cpu_count() or 1)
    ta, tb = torch.from_numpy(np.array(a)), torch.from_numpy(np.array(b))  # writable copies
    ta @ tb  # pylint: disable=pointless-statement
    sides["torch"] = timer(lambda: ta @ tb)
  for _ in range(reps):
    for once, _ in sides.values():
      once()
  return {name: 2 * m * k * n / best[0] / 1e9 for name, (_, best) in sides.items()}


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--sizes", type=count_arg(1), nargs="+", default=[1024, 2048, 4096])
  p.add_argument("--shapes", nargs="+", metavar="MxKxN",
                 help="products [M, K] x [K, N] instead of --sizes; 'steps': STEP_SHAPES")
  p.add_argument("--torch", action="store_true", help="PyTorch's rate beside XLA's")
  p.add_argument("--reps", type=count_arg(1), default=5)
  args = p.parse_args()
  if args.shapes == ["steps"]:
    shapes = dict(STEP_SHAPES)
  elif args.shapes and "steps" in args.shapes:
    p.error("argument --shapes: 'steps' stands alone (it is the whole list STEP_SHAPES)")
  elif args.shapes:
    try:
      shapes = {s: shape_arg(s) for s in args.shapes}
    except argparse.ArgumentTypeError as e:
      p.error(f"argument --shapes: {e}")
  else:
    shapes = {f"{n}^3": (n, n, n) for n in args.sizes}
  if args.torch:
    try:
      import torch  # pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
      p.error("--torch: PyTorch is not installed (pip install -e '.[torch]')")
  print(f"{os.cpu_count()} cores, jax {jax.__version__} on {jax.default_backend()}; "
        f"load average {' '.join(open('/proc/loadavg').read().split()[:3])}")
  done = 0
  try:
    for name, (m, k, n) in shapes.items():
      r = rates(m, k, n, args.reps, args.torch)
      line = f"RATIO peak fp32 matmul {name}: {r['xla']:.0f} GFLOP/s"
      if args.torch:
        line += (f" (torch {r['torch']:.0f} GFLOP/s: XLA x{r['xla'] / r['torch']:.2f}) "
                 f"[{m}x{k}] x [{k}x{n}]")
      print(line, flush=True)
      done += 1
  except KeyboardInterrupt:  # the lines above are all it measured; it writes no file
    print(f"matmul_peak.py: stopped by Ctrl-C after {done} of {len(shapes)} products",
          file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  main()
