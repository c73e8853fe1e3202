"""Paired A/B in one process: SmolLM2-135M batch-1 decode step with (a) each layer writing
its new keys/values into its cache slice before attending ("write", the code before the
seventeenth session), (b) the new rows written once after all layers
(``layers.appends``, ``attention.attend_appended``), and (c) that with YNNPACK's fusions
off (``runtime.compiler_options()``, c2cjax's default on CPU since then).

  python benchmarks/issue16_decode17/append_ab.py [--layouts unscanned-bf16 unscanned scanned]
      [--prompt-tokens 42 124] [--rounds 6] [--new 64]

The decode step is a generate of ``--new`` tokens minus one of 1 token, over ``--new - 1``.
Each variant is its own jitted program (its own function, so no traced program is shared);
variants alternate within each round, in a rotating order.
"""
import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from c2cjax import load_model, offline, runtime, sampling
from c2cjax.models import layers, lm as lm_lib


def prompt(tok, n: int) -> np.ndarray:
  text = "Write a short story about a robot who learns to paint."
  extra = (" It should describe the studio, the colours, the first failed attempts and "
           "what the robot finally understands about art.").split()
  for k in range(len(extra) * 20 + 1):
    msg = text + " " + " ".join(extra[i % len(extra)] for i in range(k)) if k else text
    msg = tok.apply_chat_template([{"role": "user", "content": msg}],
                                  add_generation_prompt=True, tokenize=False)
    ids = tok(msg, add_special_tokens=False)["input_ids"]
    if len(ids) >= n:
      return np.asarray([ids], np.int32)
  raise SystemExit(f"no {n}-token prompt")


def variant(module, params, ids, new: int, append: bool, ynn: bool):
  """Two compiled programs (1 and ``new`` tokens) for one variant."""
  opts = {} if ynn else {"xla_cpu_experimental_ynn_fusion_type": ""}
  mask = jnp.ones_like(ids)
  fns = {}
  real = layers.appends
  if not append:
    layers.appends = lambda n, keep: False
  try:
    for n in (1, new):
      cfg = sampling.SamplingConfig(max_new_tokens=n, eos_ids=(-5,))
      f = jax.jit(lambda p, t, m, r, cfg=cfg: lm_lib.generate(module, p, t, m, r, cfg,
                                                              ids.shape[1] + new),
                  compiler_options=opts)
      f = f.lower(params, ids, mask, jax.random.PRNGKey(0)).compile()
      fns[n] = f
  finally:
    layers.appends = real
  run = lambda n: fns[n](params, ids, mask, jax.random.PRNGKey(0))[0].block_until_ready()
  tokens = np.asarray(run(new))

  def step() -> float:
    best = {}
    for n in (1, new):
      best[n] = min(timed(run, n) for _ in range(2))
    return (best[new] - best[1]) / (new - 1)
  return step, tokens


def timed(run, n):
  t = time.perf_counter()
  run(n)
  return time.perf_counter() - t


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--layouts", nargs="+", default=["unscanned-bf16", "unscanned", "scanned"])
  ap.add_argument("--prompt-tokens", type=int, nargs="+", default=[42, 124])
  ap.add_argument("--rounds", type=int, default=6)
  ap.add_argument("--new", type=int, default=64)
  args = ap.parse_args()
  base = load_model(offline.smollm2_gguf())
  print(f"jax {jax.__version__}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; "
        f"default options {runtime.compiler_options()}")
  for layout in args.layouts:
    lm = base if layout == "scanned" else base.with_layout(scan_layers=False)
    if layout.endswith("bf16"):
      lm = lm.with_layout(weight_dtype=jnp.bfloat16)
    for n in args.prompt_tokens:
      ids = jnp.asarray(prompt(base.tokenizer, n))
      names = ("write", "append", "append+ynn-off")
      made = [variant(lm.module, lm.params, ids, args.new, a, y)
              for a, y in ((False, True), (True, True), (True, False))]
      steps = dict(zip(names, (m[0] for m in made)))
      same = all(np.array_equal(made[0][1], m[1]) for m in made)
      times = {k: [] for k in names}
      for r in range(args.rounds):
        order = names[r % 3:] + names[:r % 3]
        for k in order:
          times[k].append(steps[k]())
      med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
      line = ", ".join(f"{k} {v:.2f} ms" for k, v in med.items())
      print(f"{layout:15s} prompt {ids.shape[1]:4d}: {line}; same tokens: {same}")
      for a, b in (("write", "append"), ("append", "append+ynn-off"), ("write", "append+ynn-off")):
        d = [x - y for x, y in zip(times[a], times[b])]
        print(f"   {a} minus {b}: median {1e3 * statistics.median(d):+.2f} ms, "
              f"{b} faster in {sum(x > 0 for x in d)} of {len(d)}")


if __name__ == "__main__":
  main()
