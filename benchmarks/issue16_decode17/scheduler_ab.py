"""Paired A/B (5 rounds, one process): the decode step with c2cjax's CPU options and with
xla_cpu_enable_concurrency_optimized_scheduler set true / false on top. Run from the repo root:
  python benchmarks/issue16_decode17/scheduler_ab.py
"""
import statistics, sys, time, jax, jax.numpy as jnp, numpy as np
sys.path.insert(0, "benchmarks/issue16_decode17")
from append_ab import prompt, timed
from c2cjax import load_model, offline, sampling
from c2cjax.models import lm as lm_lib
base = load_model(offline.smollm2_gguf())
Y = {"xla_cpu_experimental_ynn_fusion_type": ""}
variants = {"default": Y, "conc=true": dict(Y, xla_cpu_enable_concurrency_optimized_scheduler=True),
            "conc=false": dict(Y, xla_cpu_enable_concurrency_optimized_scheduler=False)}
for layout in ("scanned", "unscanned"):
  lm = base if layout == "scanned" else base.with_layout(scan_layers=False)
  ids = jnp.asarray(prompt(base.tokenizer, 42)); mask = jnp.ones_like(ids); new = 64
  steps = {}
  for name, opts in variants.items():
    fns = {}
    for n in (1, new):
      cfg = sampling.SamplingConfig(max_new_tokens=n, eos_ids=(-5,))
      f = jax.jit(lambda p, t, m, r, cfg=cfg: lm_lib.generate(lm.module, p, t, m, r, cfg, ids.shape[1] + new), compiler_options=opts)
      fns[n] = f.lower(lm.params, ids, mask, jax.random.PRNGKey(0)).compile()
    run = lambda n, fns=fns: fns[n](lm.params, ids, mask, jax.random.PRNGKey(0))[0].block_until_ready()
    run(1); run(new)
    steps[name] = lambda run=run: (min(timed(run, new) for _ in range(2)) - min(timed(run, 1) for _ in range(2))) / (new - 1)
  names = list(variants); times = {k: [] for k in names}
  for r in range(5):
    for k in names[r % 3:] + names[:r % 3]:
      times[k].append(steps[k]())
  print(layout, {k: round(1e3 * statistics.median(v), 2) for k, v in times.items()})
  for k in names[1:]:
    d = [a - b for a, b in zip(times["default"], times[k])]
    print(f"  default minus {k}: {1e3 * statistics.median(d):+.2f} ms, {k} faster in {sum(x > 0 for x in d)} of 5")
