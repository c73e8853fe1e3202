"""Paired A/B in one process: SmolLM2-135M's prefill (fp32, stacked layers, last logits)
compiled with XLA's defaults and with YNNPACK's fusions off
(``compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""}``), alternating.

  python benchmarks/issue16_decode16/prefill_ynn_ab.py 8 256
"""
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from c2cjax import load_model, offline
from c2cjax.models import lm as lm_lib


def main(batch: int, length: int, rounds: int = 6):
  lm = load_model(offline.smollm2_gguf(), tokenizer=False)
  ids = jnp.asarray(np.random.default_rng(0).integers(0, lm.config.vocab_size, (batch, length)),
                    jnp.int32)
  mask = jnp.ones((batch, length), jnp.int32)
  lowered = jax.jit(lambda p, t, m: lm_lib.prefill(lm.module, p, t, m, length)[0]).lower(
      lm.params, ids, mask)
  variants = {"default": lowered.compile(),
              "ynn-off": lowered.compile(
                  compiler_options={"xla_cpu_experimental_ynn_fusion_type": ""})}
  outs = {k: np.asarray(c(lm.params, ids, mask)) for k, c in variants.items()}
  print("max |default - ynn-off| logits:", float(np.abs(outs["default"] - outs["ynn-off"]).max()))
  times = {k: [] for k in variants}
  for r in range(rounds):
    for k in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
      best = np.inf
      for _ in range(2):
        start = time.perf_counter()
        variants[k](lm.params, ids, mask).block_until_ready()
        best = min(best, time.perf_counter() - start)
      times[k].append(best)
  a, b = np.array(times["default"]), np.array(times["ynn-off"])
  tokens = batch * length
  print(f"{batch}x{length}: default {np.median(a):.2f} s ({tokens / np.median(a):.0f} tok/s), "
        f"ynn-off {np.median(b):.2f} s ({tokens / np.median(b):.0f} tok/s); default minus "
        f"ynn-off, median {np.median(a - b):+.2f} s; ynn-off faster in {(b < a).sum()} of {rounds}")


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]))
