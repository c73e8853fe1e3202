"""What ``benchmarks/device.sh`` measures on one accelerator; one JSON + one Markdown table.

    python benchmarks/device_bench.py --out DIR [--dry] [--peak-tflops X]

  train     the fuser training step (``c2cjax.train``): tokens/s, step time, peak device
            memory, model FLOPs per step and MFU against the device's peak.
  decode    batch-1 greedy decode tokens/s of the receiver: c2cjax (stacked and per-layer
            params) vs transformers (on whatever device torch has here; it is named).
  latency   one batch-1 query: receiver alone vs C2C vs text-to-text.

In that order; a section that fails is recorded with its error and the others still run
(the script then exits non-zero).

Shapes: the paper's (random Qwen3-0.6B <- Qwen2.5-0.5B-Instruct at their published
configs, fuser hidden 1024 x 3 layers on all 28 receiver layers, batch 4 x 256, LLMs in
``llm_dtype`` "auto": bf16 on accelerators, fp32 on CPU). ``--dry``: tiny random models and
a tiny fuser on CPU, a few steps (a CI smoke test of the whole script).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from c2cjax.config_check import count_arg  # pylint: disable=wrong-import-position

# Dense bf16 peak TFLOP/s by device kind (vendor data sheets); --peak-tflops overrides.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
               "A10": 125.0, "V100": 125.0, "TPU v4": 275.0, "TPU v5 lite": 197.0,
               "TPU v5p": 459.0, "TPU v6": 918.0}


def _shapes(text: str) -> list[tuple[int, int]]:
  """``"16x512,8x1024"`` -> ``[(16, 512), (8, 1024)]`` (argparse type: a bad value is one
  line naming it)."""
  out = []
  for bt in filter(None, text.split(",")):
    b, _, t = bt.partition("x")
    if not (b.isdigit() and t.isdigit() and int(b) > 0 and int(t) >= 4 and int(t) % 2 == 0):
      raise argparse.ArgumentTypeError(
          f"{bt!r} is not BxT (batch >= 1, an even sequence length >= 4, e.g. 16x512)")
    out.append((int(b), int(t)))
  return out


def _gib(x: float) -> str:
  return f"{x:.2f} GiB" if x >= 1 else f"{x * 1024:.1f} MiB"


def _counts(text: str) -> list[int]:
  """``"2,4,28"`` -> ``[2, 4, 28]`` (argparse type)."""
  return [count_arg(1)(n) for n in filter(None, text.split(","))]


def _with_pairs(c2c, n: int):
  """The same models and fusers, each fuser computing ``n`` layer pairs together."""
  from c2cjax.c2c import C2C
  return C2C(c2c.receiver, c2c.sharers, c2c.fusers, mode=c2c.mode, alignment=c2c.alignment,
             max_len=c2c.max_len, pairs_at_once=n)


def _peak(device_kind: str, given: float | None) -> float | None:
  if given:
    return given
  for k, v in PEAK_TFLOPS.items():
    if k.lower() in device_kind.lower():
      return v
  return None


def _models(dry: bool, dtype):
  from c2cjax import fuse as fuse_lib
  from c2cjax.c2c import C2C, Fuser
  from c2cjax.models import paper
  from c2cjax.models.tiny import hf_config, tiny_lm
  if dry:
    receiver, sharer = tiny_lm("qwen3", seed=0, dtype=dtype), tiny_lm("qwen2", seed=1, dtype=dtype)
    hf = [hf_config("qwen3"), hf_config("qwen2")]
    sizes = dict(hidden_dim=32, intermediate_dim=48)
  else:
    receiver, sharer = (paper.random_lm(n, dtype, seed=i) for i, n in enumerate(paper.MODELS))
    hf = [paper.hf_config(n) for n in paper.MODELS]
    sizes = dict(hidden_dim=1024, intermediate_dim=1024, num_layers=3)
  nr, ns = receiver.config.num_layers, sharer.config.num_layers
  released = fuse_lib.LayerMap(tuple(range(nr)), tuple(max(0, t + ns - nr) for t in range(nr)))
  fuser = Fuser.init(receiver, sharer, jax.random.PRNGKey(0), released, **sizes)
  return C2C(receiver, [sharer], [fuser]), hf


def _body_params(lm) -> int:
  return sum(x.size for x in jax.tree.leaves(lm.params) if lm.config.vocab_size not in x.shape)


def train_flops(c2c, batch: int, seq: int, split) -> float:
  """Matmul FLOPs of one step (2 per weight per token; attention scores aside).

  Pass 1: receiver and sharer prefill and the fuser forward on ``fused_end`` tokens;
  fuser backward 2x its forward; pass 2: receiver forward with its LM head on the
  tokens from ``start`` and the backward to the fused cache (input gradients, 1x).
  """
  start, fused_end = split
  r, s = c2c.receiver, c2c.sharers[0]
  n_f = sum(x.size for x in jax.tree.leaves(c2c.fusers[0].params))
  head = r.config.vocab_size * r.config.hidden_size
  p1 = 2 * (_body_params(r) + _body_params(s) + 3 * n_f) * batch * fused_end
  p2 = 2 * 2 * (_body_params(r) + head) * batch * (seq - start)
  return float(p1 + p2)


def bench_train(c2c, dry: bool, steps: int, shape: tuple[int, int] | None = None,
                profile: pathlib.Path | None = None) -> dict:
  """Median step time of the jitted training step; with ``profile``, one more step traced
  into that folder (``jax.profiler``, perfetto; and the compiled HLO, ``hlo.txt``) and
  summarised by :func:`trace_summary`."""
  from c2cjax import train
  from c2cjax.defaults import train_config
  from train_step import synthetic_batch
  b, t = shape or ((2, 32) if dry else (4, 256))
  tx, _ = train.make_optimizer(train_config(), 100)
  fparams = jax.tree.map(jnp.copy, tuple(f.params for f in c2c.fusers))  # donated below
  state = train.TrainState(jnp.int32(0), fparams, tx.init(fparams), jax.random.PRNGKey(1))
  batch_np = synthetic_batch(dict(accum=1, batch=b, seq=t, seed=0),
                             c2c.receiver.config.vocab_size, c2c.sharers[0].config.vocab_size)
  split = train.pass2_split(batch_np, 8)
  batch = jax.tree.map(jnp.asarray, dict(batch_np, sharer_ids=(batch_np["sharer_ids"],)))
  rp, sp = c2c.receiver.params, tuple(s.params for s in c2c.sharers)
  t0 = time.perf_counter()
  step = jax.jit(train.make_train_step(c2c, tx), donate_argnums=(0,),
                 static_argnames=("split",)).lower(state, rp, sp, batch, split=split).compile()
  state, m = step(state, rp, sp, batch)
  jax.block_until_ready(m)
  first = time.perf_counter() - t0
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    state, m = step(state, rp, sp, batch)
    jax.block_until_ready(m)
    times.append(time.perf_counter() - t0)
  med = float(np.median(times))
  stats = jax.devices()[0].memory_stats() or {}
  # The step program's own peak by XLA's buffer assignment (arguments, outputs, temps):
  # comparable with torch's max_memory_allocated over steps; the process peak above also
  # holds whatever was allocated before (model init, other sections).
  mem = step.memory_analysis()
  step_peak = getattr(mem, "peak_memory_in_bytes", 0) if mem is not None else 0
  traced = None
  if profile is not None:
    with jax.profiler.trace(str(profile), create_perfetto_trace=True):
      state, m = step(state, rp, sp, batch)
      jax.block_until_ready(m)
    # the trace names each kernel's HLO op (or command buffer); the HLO says what it is
    (profile / "hlo.txt").write_text(step.as_text())
    traced = trace_summary(profile)
  return {"batch": b, "seq": t, "split": list(split), "compile_and_first_s": first,
          "pairs_at_once": c2c.spec.pairs_at_once,
          "step_peak_memory_gib": step_peak / 2**30 if step_peak else None,
          "profile": traced,
          "step_s": med, "tokens_per_s": b * t / med, "loss": float(m["loss"]),
          "flops_per_step": train_flops(c2c, b, t, split),
          "peak_device_memory_gib": stats.get("peak_bytes_in_use", 0) / 2**30 or None,
          "fuser_params_m": sum(x.size for x in jax.tree.leaves(state.params)) / 1e6}


def trace_summary(folder: pathlib.Path, top: int = 25) -> dict:
  """Per traced process (host threads, each device): the span of its events, the time some
  event was running (their union), the longest-running event names and, for device
  kernels, the HLO ops (or command buffers) they ran for. On a GPU the device's
  busy share of the step's span says whether the step waits on launches and the host."""
  import collections
  import gzip
  import re
  trace = json.loads(gzip.open(next(folder.rglob("perfetto_trace.json.gz"))).read())
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  names = {e["pid"]: e.get("args", {}).get("name", str(e["pid"])) for e in events
           if e.get("ph") == "M" and e.get("name") == "process_name"}
  by_pid = collections.defaultdict(list)
  for e in events:
    if e.get("ph") == "X" and "dur" in e:
      by_pid[e["pid"]].append(e)
  out = {}
  for pid, evs in by_pid.items():
    spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in evs)
    busy, end = 0.0, -float("inf")
    for a, b in spans:  # union of the events' intervals
      if b > end:
        busy += b - max(a, end)
        end = b
    per_name, per_op, count = collections.Counter(), collections.Counter(), collections.Counter()
    for e in evs:
      per_name[re.sub(r"[._]\d+$", "", e["name"])[:80]] += e["dur"]
      op = e.get("args", {}).get("hlo_op")  # device kernels: their HLO op or command buffer
      if op:
        per_op[op] += e["dur"]
        count[op] += 1
    out[names.get(pid, str(pid))] = {
        "events": len(evs), "span_ms": (end - spans[0][0]) / 1e3, "busy_ms": busy / 1e3,
        "top_ms": {k: v / 1e3 for k, v in per_name.most_common(top)},
        "top_hlo_ops": {k: {"ms": v / 1e3, "kernels": count[k]}
                        for k, v in per_op.most_common(top)}}
  return out


def bench_decode(c2c, hf_configs, dry: bool, reps: int) -> dict:
  """Batch-1 greedy decode of the receiver; transformers on a same-config random model."""
  import torch
  import transformers as tf
  r = c2c.receiver
  n_new, p = (8, 16) if dry else (64, 124)
  ids = np.random.default_rng(0).integers(100, r.config.vocab_size, (1, p)).tolist()
  ours = lambda: r.generate(ids, max_new_tokens=n_new, eos_ids=[], return_tokens=True)
  dev = "cuda" if torch.cuda.is_available() else "cpu"
  hf = tf.AutoModelForCausalLM.from_config(hf_configs[0]).to(dev).eval()
  if r.dtype == jnp.bfloat16:
    hf = hf.to(torch.bfloat16)
  x = torch.tensor(ids, device=dev)

  def theirs():
    with torch.no_grad():
      hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n_new,
                  min_new_tokens=n_new, do_sample=False, pad_token_id=0)
    if dev == "cuda":
      torch.cuda.synchronize()

  from c2c_query import best_time
  t_ours, t_hf = best_time(ours, reps), best_time(lambda: (theirs(), 0)[1], reps)
  # The per-layer layout (params unstacked, layers unrolled): inside nn.scan each layer's
  # weights are sliced out of the stack every token (on the H200, many small copies).
  flat = r.with_layout(scan_layers=False)
  t_flat = best_time(lambda: flat.generate(ids, max_new_tokens=n_new, eos_ids=[],
                                           return_tokens=True), reps)
  del flat
  return {"prompt": p, "new_tokens": n_new, "c2cjax_tok_s": n_new / t_ours,
          "c2cjax_per_layer_tok_s": n_new / t_flat,
          "transformers_tok_s": n_new / t_hf, "transformers_device": dev,
          "ratio": t_hf / t_ours}


def bench_latency(c2c, dry: bool, reps: int) -> dict:
  from c2c_query import measure
  from c2cjax.evaluation.systems import open_gates
  c2c.fusers = tuple(open_gates(f) for f in c2c.fusers)  # the fusion cost is paid
  p, n, bg = (16, 8, 8) if dry else (124, 64, 64)
  t = np.random.default_rng(1).integers(100, c2c.receiver.config.vocab_size, (1, p)).astype(np.int32)
  out = measure(c2c, t, np.ones_like(t), (t.copy(),), n, bg, reps)
  out.update(prompt=p, answer=n, background=bg,
             c2c_over_receiver=out["c2c query"] / out["receiver query"],
             t2t_over_c2c=out["t2t query"] / out["c2c query"])
  return out


# Train first: the peak device memory jax reports is the process's, so it is the training
# step's (with the models) only when nothing ran before it.
SECTIONS = ("train", "decode", "latency", "train_more")


def _fmt(res: dict, name: str, render) -> list[str]:
  """Rows of one section, or one row saying why it has none."""
  sec = res.get(name)
  if sec is None:
    return [f"| {name} | not run |"]
  if "error" in sec:
    return [f"| {name} | FAILED: {sec['error'][:300]} |"]
  return render(sec)


def markdown(res: dict) -> str:
  d = res["device"]

  def train(tr):
    mfu = f"{100 * tr['mfu']:.1f}%" if tr.get("mfu") is not None else "n/a (peak unknown)"
    mem = (f"{tr['peak_device_memory_gib']:.2f} GiB" if tr["peak_device_memory_gib"]
           else "n/a (no device memory stats)")
    pairs = tr.get("pairs_at_once", 1)
    at_once = f", fuser pairs {pairs} at once" if pairs != 1 else ""
    return [f"| train step, batch {tr['batch']} x {tr['seq']} (split {tr['split']}{at_once}) | "
            f"{tr['step_s'] * 1e3:.1f} ms |",
            f"| train compile + first step | {tr['compile_and_first_s']:.1f} s |",
            f"| train tokens/s | {tr['tokens_per_s']:.0f} |",
            f"| train peak device memory (process) | {mem} |",
            f"| train step program's peak memory (XLA buffer assignment) | "
            + (_gib(tr["step_peak_memory_gib"]) + " |" if tr.get("step_peak_memory_gib")
               else "n/a |"),
            f"| train model TFLOP per step / MFU | {tr['flops_per_step'] / 1e12:.3f} / {mfu} |"]

  def decode(de):
    return [f"| decode tok/s, c2cjax (batch 1, {de['prompt']}-token prompt) | "
            f"{de['c2cjax_tok_s']:.1f} |",
            f"| decode tok/s, c2cjax, per-layer params (`scan_layers=False`) | "
            f"{de['c2cjax_per_layer_tok_s']:.1f} |",
            f"| decode tok/s, transformers ({de['transformers_device']}) | "
            f"{de['transformers_tok_s']:.1f} |"]

  def latency(la):
    return [f"| query s: receiver / C2C / T2T ({la['prompt']}+{la['answer']} tokens) | "
            f"{la['receiver query']:.3f} / {la['c2c query']:.3f} / {la['t2t query']:.3f} |",
            f"| C2C / receiver; T2T / C2C | {la['c2c_over_receiver']:.2f}; "
            f"{la['t2t_over_c2c']:.2f} |"]

  rows = [
      f"Device: {d['kind']} ({d['platform']}, {d['count']} device(s)); jax {d['jax']}; "
      f"{res['date']}; {'DRY RUN (tiny shapes, CPU)' if res['dry'] else 'paper shapes'}; "
      f"LLM dtype {res['llm_dtype']}"
      + (f"; XLA_FLAGS={d['xla_flags']}" if d.get("xla_flags") else ""),
      "", "| measure | value |", "|---|---:|",
      f"| parity tests on the device | {res['parity']} |"]
  for name, render in (("train", train), ("decode", decode), ("latency", latency)):
    rows += _fmt(res, name, render)
  more = res.get("train_more")
  if isinstance(more, dict):  # its error
    rows += _fmt(res, "train_more", None)
  for tr in more or []:
    rows += train(tr)
  return "\n".join(rows) + "\n"


def write(res: dict, out: pathlib.Path) -> str:
  """Writes DIR/device.json and DIR/device.md (after every section: a run cut short by
  its time limit still leaves what it measured)."""
  out.mkdir(parents=True, exist_ok=True)
  (out / "device.json").write_text(json.dumps(res, indent=1))
  md = markdown(res)
  (out / "device.md").write_text(md)
  return md


def _interrupted(where: str) -> None:
  """One line and exit 130. os._exit: a normal exit tears the interpreter down under XLA's
  threads mid-run and can segfault (as c2cjax.train's stop does)."""
  print(f"device_bench.py: interrupted {where}", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(130)


def main():
  # The signal is recorded as well as raised: a KeyboardInterrupt raised inside a garbage
  # collector callback (jax's _xla_gc_callback) is printed and dropped, and the run would
  # go on; the record stops it after the section in progress.
  from c2cjax.rundir import StopSignals  # pylint: disable=import-outside-toplevel
  default_hook = sys.unraisablehook
  sys.unraisablehook = lambda u: (None if isinstance(u.exc_value, KeyboardInterrupt)
                                  else default_hook(u))  # that one is handled: no traceback
  with StopSignals() as stop:
    _main(stop)


def _main(stop):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--out", required=True)
  ap.add_argument("--dry", action="store_true")
  ap.add_argument("--peak-tflops", type=float, default=None)
  ap.add_argument("--parity", default="not run", help="parity test summary (from device.sh)")
  ap.add_argument("--steps", type=count_arg(1), default=None)
  ap.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=SECTIONS,
                  help="which benchmarks to run (default: all)")
  ap.add_argument("--profile", default=None, metavar="DIR",
                  help="trace one more step of the paper-shape training step into DIR (a new "
                       "folder) and summarise it in the JSON (train.profile)")
  ap.add_argument("--check-args", action="store_true",
                  help="only check the arguments and --out, then exit (device.sh runs this "
                       "before the parity tests)")
  ap.add_argument("--more-train", default=[], type=_shapes, metavar="BxT,...",
                  help="further training-step shapes after the paper's, e.g. 16x512 (their "
                       "peak memory is the process's so far)")
  ap.add_argument("--pairs-at-once", default=[], type=_counts, metavar="N,...",
                  help="the paper-shape step again with each fuser computing N layer pairs "
                       "together (C2C(pairs_at_once=N)), after --more-train's")
  args = ap.parse_args()
  for f in ("device.json", "device.md"):
    if (pathlib.Path(args.out) / f).exists():
      ap.error(f"{pathlib.Path(args.out) / f} exists (an earlier run's); choose a new --out")
  if args.profile and pathlib.Path(args.profile).exists():
    ap.error(f"--profile {args.profile} already exists; choose a new folder")
  if pathlib.Path(args.out).exists() and not pathlib.Path(args.out).is_dir():
    ap.error(f"--out {args.out} is a file; give a folder")
  if args.check_args:
    return
  from c2cjax.train import llm_dtype
  dtype = llm_dtype("auto")
  dev = jax.devices()[0]
  reps, steps = (1, 2) if args.dry else (3, args.steps or 10)
  out = pathlib.Path(args.out)
  t0 = time.perf_counter()
  log = lambda what: print(f"[{time.perf_counter() - t0:6.1f} s] {what}", file=sys.stderr,
                           flush=True)
  try:
    c2c, hf = _models(args.dry, dtype)
  except KeyboardInterrupt:
    _interrupted("while building the models; nothing measured, nothing written")
  import flax
  import transformers
  res = {"date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
         "dry": args.dry, "llm_dtype": np.dtype(dtype).name, "parity": args.parity,
         "device": {"kind": dev.device_kind, "platform": dev.platform,
                    "count": jax.device_count(), "jax": jax.__version__,
                    "flax": flax.__version__, "transformers": transformers.__version__,
                    "host": f"{platform.machine()}, {os.cpu_count()} cores",
                    # compiler flags change the figures: recorded with them
                    "xla_flags": os.environ.get("XLA_FLAGS") or None}}
  peak = _peak(dev.device_kind, args.peak_tflops)
  more = args.more_train
  prof = pathlib.Path(args.profile) if args.profile else None
  runs = {"train": lambda: bench_train(c2c, args.dry, steps, profile=prof),
          "train_more": lambda: (
              [bench_train(c2c, args.dry, steps, bt) for bt in more]
              + [bench_train(_with_pairs(c2c, n), args.dry, steps) for n in args.pairs_at_once]),
          "decode": lambda: bench_decode(c2c, hf, args.dry, reps),
          "latency": lambda: bench_latency(c2c, args.dry, reps)}
  failed = []

  def section(i: int, name: str) -> str:
    log(f"models ready; {name}" if i == 0 else name)
    try:
      res[name] = runs[name]()
    except Exception as e:  # pylint: disable=broad-except  (a Ctrl-C passes: not an Exception)
      # one section's failure (an out-of-memory, a missing kernel) must not lose the others
      res[name] = {"error": f"{type(e).__name__}: {e}"}
      failed.append(name)
      log(f"{name} FAILED: {type(e).__name__}: {str(e)[:2000]}")
    for tr in ([res["train"]] if name == "train" else res[name] if name == "train_more" else []):
      if isinstance(tr, dict) and "error" not in tr:
        tr["peak_tflops"] = peak
        tr["mfu"] = tr["flops_per_step"] / tr["step_s"] / (peak * 1e12) if peak else None
    return write(res, out)

  for i, name in enumerate(n for n in SECTIONS if n in args.sections):
    try:  # Ctrl-C anywhere in a section, its log line and write included: keep what was measured
      md = section(i, name)
    except KeyboardInterrupt:
      write(res, out)
      _interrupted(f"after {name}; the sections measured are in {out / 'device.json'}"
                   if name in res else
                   f"during {name}; the sections before it are in {out / 'device.json'}")
    if stop.signum is not None:  # a Ctrl-C that XLA's gc callback swallowed
      _interrupted(f"after {name}; the sections measured are in {out / 'device.json'}")
  log("done")
  print(md)
  if failed:
    sys.exit(f"sections failed: {', '.join(failed)} (see device.md)")


if __name__ == "__main__":
  main()
