import collections, glob, gzip, json, os, re, sys, time
import jax, jax.numpy as jnp, numpy as np
from c2cjax import load_model, offline
layout = sys.argv[1]; new = int(sys.argv[2])
lm = load_model(offline.smollm2_gguf())
if layout.startswith("unscanned"): lm = lm.with_layout(scan_layers=False)
if layout.endswith("bf16"): lm = lm.with_layout(weight_dtype=jnp.bfloat16)
tok = lm.tokenizer
msg = tok.apply_chat_template([{"role": "user", "content": "Write a short story about a robot who learns to paint."}], add_generation_prompt=True, tokenize=False)
ids = np.asarray([tok(msg, add_special_tokens=False)["input_ids"]], np.int32); mask = np.ones_like(ids)
def run(n):
  t = time.perf_counter(); lm.generate_ids(ids, mask, max_new_tokens=n, eos_ids=[-5], max_len=ids.shape[1] + new); return time.perf_counter() - t
for n in (1, new): run(n)
for r in range(2):
  t1 = min(run(1) for _ in range(3)); tn = min(run(new) for _ in range(3))
  print(f"{layout}: step {(tn - t1) / (new - 1) * 1e3:.2f} ms")
def agg(n):
  d = f"/tmp/p17/tr-{layout}-{n}"; os.system(f"rm -rf {d}")
  with jax.profiler.trace(d, create_perfetto_trace=True): run(n)
  f = glob.glob(f"{d}/**/*.trace.json.gz", recursive=True)[0]
  ev = json.load(gzip.open(f)); ev = ev["traceEvents"] if isinstance(ev, dict) else ev
  tot = collections.Counter(); cnt = collections.Counter()
  for e in ev:
    if e.get("ph") != "X": continue
    k = e["name"]
    if k.startswith("$") or "ThunkExecutor" in k or "profiler" in k or k.startswith("end:"): continue
    k = re.sub(r"\.\d+$", "", k); tot[k] += e["dur"]; cnt[k] += 1
  return tot, cnt
a, ca = agg(1); b, cb = agg(new)
diff = {k: (b[k] - a.get(k, 0)) / (new - 1) for k in b}
cd = {k: (cb[k] - ca.get(k, 0)) / (new - 1) for k in b}
print(f"thunk time per decode step (both threads): {sum(diff.values())/1e3:.2f} ms")
for k, v in sorted(diff.items(), key=lambda kv: -kv[1])[:25]:
  print(f"{v/1e3:8.3f} ms/step {cd[k]:7.1f}/step  {k[:90]}")
