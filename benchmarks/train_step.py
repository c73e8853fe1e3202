"""C2C training-step throughput and memory: c2cjax (jit) vs a plain PyTorch step.

    python benchmarks/train_step.py [--batch 4] [--seq 128] [--accum 1] [--steps 10]
    python benchmarks/train_step.py --check    # same loss/grad norm in both, then exit

The local pair of ``configs/local.py`` (receiver SmolLM2-135M-Instruct, sharer
Gemma-3-270M, both fp32 from the same GGUF files; fuser sizes, layer map and optimizer
from the config) on a synthetic batch of fixed shape ``[A, B, T]``: random ids in each
vocabulary, ``fuse_mask`` on the first half of every row, ``loss_mask`` on the second.

One step, in both frameworks (the computation of ``c2cjax.train.c2c_nll`` and
``make_train_step``):

  pass 1  receiver and sharer cache-only prefill over the whole sequence (frozen, no
          grad), fuse the ``fuse_mask`` slots of every mapped receiver layer (train
          mode: Gumbel-sigmoid gates, dropout);
  pass 2  receiver over the whole sequence on that cache, keeping the fused slots (fresh
          keys/values elsewhere), next-token NLL on the ``loss_mask`` tokens;
  then    gradient of the fuser params only (summed over the ``A`` micro-batches, divided
          by the number of target tokens), global-norm clip, AdamW.

The PyTorch side is eager ``transformers`` models (``AutoModelForCausalLM.from_pretrained(
dir, gguf_file=...)``) with a compact ``nn.Module`` fuser of the same sizes; pass 2 keeps
the fused slots through a ``DynamicCache`` subclass whose ``update`` substitutes the pass-1
(fused) keys/values at those slots before attention -- the same computation as c2cjax's
``keep``, not a cheaper variant. Each framework runs in its own child process (so peak
RSS is its own); compile/warm-up is timed separately, then the median of ``--steps``.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import math
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
_RESULT = "RESULT "


# --- shared helpers (no framework imports) ------------------------------------------------
def _status_kib(field: str) -> int | None:
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith(field + ":"):
        return int(line.split()[1])
  except OSError:
    pass
  return None


class PeakRSS:
  """Process RSS and its high-water mark, resettable where Linux allows it.

  Writing ``5`` to ``/proc/self/clear_refs`` resets the peak (VmHWM, which also backs
  ``getrusage(...).ru_maxrss``), so a phase's peak can be measured on its own. Without
  that, ``ru_maxrss`` is the peak since process start.
  """

  def __init__(self):
    try:
      pathlib.Path("/proc/self/clear_refs").write_text("5")
      self.resettable = _status_kib("VmHWM") is not None
    except OSError:
      self.resettable = False

  def reset(self):
    if self.resettable:
      pathlib.Path("/proc/self/clear_refs").write_text("5")

  @staticmethod
  def rss_mib() -> float:
    kib = _status_kib("VmRSS")
    return kib / 1024 if kib is not None else float("nan")

  def peak_mib(self) -> float:
    import resource  # pylint: disable=import-outside-toplevel
    hwm = _status_kib("VmHWM") if self.resettable else None
    if hwm is None:
      hwm = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return hwm / 1024


def synthetic_batch(spec: dict, receiver_vocab: int, sharer_vocab: int):
  """NumPy ``[A, B, T]`` int32 batch; same ids in both frameworks (fixed seed)."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  a, b, t = spec["accum"], spec["batch"], spec["seq"]
  rng = np.random.default_rng(spec["seed"])
  pos = np.arange(t)
  ones = np.ones((a, b, t), np.int32)
  return {
      "receiver_ids": rng.integers(0, receiver_vocab, (a, b, t), dtype=np.int32),
      "sharer_ids": rng.integers(0, sharer_vocab, (a, b, t), dtype=np.int32),
      "attention_mask": ones,
      "fuse_mask": ones * (pos < t // 2).astype(np.int32),
      "loss_mask": ones * (pos >= t // 2).astype(np.int32),
  }


def release_free_heap() -> None:
  """Hands the heap's free pages back to the OS (glibc ``malloc_trim``; elsewhere nothing).

  Called in both frameworks' processes before the timed steps: otherwise RSS still holds
  whatever loading, compilation (XLA's compiler) or autograd's first steps freed but the
  allocator kept, and the "timed" peak measures that history, not the step.
  """
  import ctypes  # pylint: disable=import-outside-toplevel
  try:
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    pass


def _timed_steps(run_step, n: int, mem: PeakRSS) -> tuple[list[float], dict]:
  """Times ``n`` calls of ``run_step()`` (each blocks until done) and their memory."""
  release_free_heap()
  rss_before = mem.rss_mib()
  mem.reset()
  times = []
  for _ in range(n):
    t = time.perf_counter()
    run_step()
    times.append(time.perf_counter() - t)
  peak = mem.peak_mib()
  return times, {"rss_before_timed_mib": rss_before, "peak_timed_mib": peak,
                 "peak_timed_delta_mib": peak - rss_before}


# --- JAX side -----------------------------------------------------------------------------
def _load_config(path: pathlib.Path):
  spec = importlib.util.spec_from_file_location("bench_train_config", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod.get_config()


def released_map(num_receiver: int, num_sharer: int) -> list[tuple[int, int]]:
  """The released C2C code's terminal map: last-aligned, every receiver layer without a
  sharer partner clamped onto sharer layer 0 (one projector per receiver layer)."""
  offset = num_sharer - num_receiver
  return [(t, max(0, t + offset)) for t in range(num_receiver)]


def _jax_models(spec: dict):
  """Receiver, sharer and a fresh fuser for ``spec["shapes"]`` (see ``SHAPES``)."""
  import jax  # pylint: disable=import-outside-toplevel
  from c2cjax import fuse as fuse_lib, train  # pylint: disable=import-outside-toplevel
  from c2cjax.c2c import C2C, Fuser  # pylint: disable=import-outside-toplevel
  from c2cjax.models import load_model, paper  # pylint: disable=import-outside-toplevel

  cfg = _load_config(pathlib.Path(spec["config"]))
  rng = jax.random.PRNGKey(cfg.seed)
  if spec["shapes"] == "local":
    # train.build_c2c's models and fuser, without the two tokenizers: the synthetic ids need
    # none and the PyTorch side loads none (Gemma's 262k-token tokenizer alone holds ~300 MiB).
    receiver = load_model(spec["receiver_gguf"], train.llm_dtype(cfg.llm_dtype),
                          tokenizer=False, remat=cfg.remat)
    sharer = load_model(spec["sharer_gguf"], train.llm_dtype(cfg.llm_dtype), tokenizer=False)
    fuser = Fuser.init(receiver, sharer, jax.random.fold_in(jax.random.fold_in(rng, 1), 0),
                       cfg.layer_map,
                       alignment=cfg.alignment, **dict(cfg.fuser))
    return cfg, C2C(receiver, [sharer], [fuser], mode=cfg.fusion_mode, alignment=cfg.alignment,
                    max_len=cfg.data.max_len, pairs_at_once=spec.get("pairs_at_once", 1))
  if spec["shapes"] == "paper":
    receiver, sharer = (paper.random_lm(n, seed=i) for i, n in enumerate(paper.MODELS))
  else:
    receiver, sharer = load_model(spec["receiver_gguf"]), load_model(spec["sharer_gguf"])
  pairs = spec["pairs"]
  layer_map = fuse_lib.LayerMap(tuple(r for r, _ in pairs), tuple(s for _, s in pairs))
  f = {k: v for k, v in spec["fuser"].items()}
  fuser = Fuser.init(receiver, sharer, jax.random.fold_in(rng, 1), layer_map, **f)
  return cfg, C2C(receiver, [sharer], [fuser], pairs_at_once=spec.get("pairs_at_once", 1))


def _jax_state(spec: dict):
  """(c2c, optimizer, train state, receiver params, sharer params, batch, pass-2 split)."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from c2cjax import train  # pylint: disable=import-outside-toplevel

  cfg, c2c = _jax_models(spec)
  tx, _ = train.make_optimizer(cfg, cfg.max_steps)
  fparams = tuple(f.params for f in c2c.fusers)
  state = train.TrainState(step=jnp.int32(0), params=fparams, opt_state=tx.init(fparams),
                           rng=jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 2))
  rparams = c2c.receiver.params
  sparams = tuple(s.params for s in c2c.sharers)
  batch_np = synthetic_batch(spec, c2c.receiver.config.vocab_size,
                             c2c.sharers[0].config.vocab_size)
  split = train.pass2_split(batch_np, spec["pass2_parts"])
  batch = jax.tree.map(jnp.asarray, _jax_batch(batch_np))
  del fparams  # the state holds them (donated at every step)
  jax.block_until_ready((state, rparams, sparams, batch))
  return c2c, tx, state, rparams, sparams, batch, split


def run_jax(spec: dict) -> dict:
  """The jitted ``c2cjax.train`` step on the synthetic batch."""
  import jax  # pylint: disable=import-outside-toplevel
  from c2cjax import train  # pylint: disable=import-outside-toplevel

  mem = PeakRSS()
  t0 = time.perf_counter()
  c2c, tx, state, rparams, sparams, batch, split = _jax_state(spec)
  load_s = time.perf_counter() - t0
  rss_loaded = mem.rss_mib()

  mem.reset()
  t0 = time.perf_counter()
  step = jax.jit(train.make_train_step(c2c, tx), donate_argnums=(0,), static_argnames=("split",),
                 compiler_options=c2c.xla_options)  # as c2cjax.train compiles it
  compiled = step.lower(state, rparams, sparams, batch, split=split).compile()
  compile_s = time.perf_counter() - t0

  def run_step():
    nonlocal state
    state, metrics = compiled(state, rparams, sparams, batch)
    jax.block_until_ready((state, metrics))
    return metrics

  t0 = time.perf_counter()
  for _ in range(spec["warmup"]):
    metrics = run_step()
  warmup_s = (time.perf_counter() - t0) / max(spec["warmup"], 1)
  peak_warm = mem.peak_mib()
  times, timed = _timed_steps(run_step, spec["steps"], mem)
  metrics = jax.device_get(run_step())
  dev = jax.devices()[0]
  stats = dev.memory_stats()
  n_fuser = sum(x.size for x in jax.tree.leaves(state.params))
  lm = c2c.fusers[0].layer_map
  return {
      "framework": "jax", "version": jax.__version__, "device": str(dev.platform),
      "device_memory_stats": None if stats is None else {
          k: stats[k] for k in ("peak_bytes_in_use", "bytes_in_use") if k in stats},
      "load_s": load_s, "compile_s": compile_s, "first_steps_s": warmup_s,
      "step_times_s": times, "rss_loaded_mib": rss_loaded,
      "peak_compile_warmup_mib": peak_warm, **timed,
      "peak_rss_resettable": mem.resettable,
      "loss": float(metrics["loss"]), "targets": float(metrics["tokens"]),
      "fuser_params": int(n_fuser), "layer_map": lm.pairs(), "split": list(split),
      "vocab": [c2c.receiver.config.vocab_size, c2c.sharers[0].config.vocab_size],
  }


# XLA:CPU option sets ``--xla-ab`` compares on the same step: XLA's default (YNNPACK's
# fusions on), YNNPACK off (what c2cjax.runtime picks on CPUs with AMX), YNNPACK for dots only.
_YNN = "xla_cpu_experimental_ynn_fusion_type"
XLA_VARIANTS = {"xla-default": {}, "ynn-off": {_YNN: ""},
                "ynn-dots": {_YNN: "LIBRARY_FUSION_TYPE_DOT"}}


def run_jax_xla_ab(spec: dict) -> dict:
  """The same step compiled under each of ``XLA_VARIANTS``, timed in paired rounds (one
  step of each per round, in turn) on one state: this VM's speed drifts within minutes, so
  only steps measured side by side compare."""
  import jax  # pylint: disable=import-outside-toplevel
  from c2cjax import train  # pylint: disable=import-outside-toplevel

  c2c, tx, state, rparams, sparams, batch, split = _jax_state(spec)
  steps = {}
  for name, options in XLA_VARIANTS.items():
    fn = jax.jit(train.make_train_step(c2c, tx), donate_argnums=(0,),
                 static_argnames=("split",), compiler_options=options)
    steps[name] = (fn.lower(state, rparams, sparams, batch, split=split).compile(), options)
  times = {name: [] for name in steps}
  for r in range(spec["warmup"] + spec["xla_ab"]):
    for name, (compiled, _) in steps.items():
      t = time.perf_counter()
      state, metrics = compiled(state, rparams, sparams, batch)
      jax.block_until_ready((state, metrics))
      if r >= spec["warmup"]:
        times[name].append(time.perf_counter() - t)
  return {"framework": "jax", "c2cjax_options": c2c.xla_options,
          "xla_ab": {n: {"options": o, "step_times_s": times[n]} for n, (_, o) in steps.items()}}


def report_xla_ab(spec: dict, out: dict) -> None:
  ab = out["xla_ab"]
  base = ab["xla-default"]["step_times_s"]
  print(f"shapes {spec['shapes']}: {spec['batch']} x {spec['seq']}; {spec['xla_ab']} paired "
        f"rounds after {spec['warmup']} untimed; load average {spec['loadavg']}; c2cjax's "
        f"options here (c2cjax.runtime): {out['c2cjax_options']}")
  for name, r in ab.items():
    t = r["step_times_s"]
    ratios = [b / x for b, x in zip(base, t)]
    print(f"  {name:12s} {statistics.median(t):7.3f} s  ({' '.join(f'{x:.2f}' for x in t)})  "
          f"default/this per round: {' '.join(f'{x:.2f}' for x in ratios)}  "
          f"options {r['options']}")


# --- where a JAX step goes (--profile) -------------------------------------------------------
def _region(op_name: str) -> str:
  """The step's part an HLO op belongs to, from its ``op_name`` metadata (named scopes)."""
  phase = "backward" if "transpose(" in op_name else "forward"
  if "pass1_prefill_fuse" in op_name:
    part = "pass 1 LLMs" if "Decoder" in op_name else "fuser"
  elif "pass2" in op_name:
    part = "pass 2 receiver"
  elif "loss" in op_name:
    part = "loss (LM head)"
  elif "optimizer" in op_name:
    return "optimizer"
  else:
    return "other / unnamed"
  return f"{part} {phase}"


def profile_summary(folder: pathlib.Path) -> dict:
  """Wall time of the traced step by part and op kind, from the perfetto trace and the HLO
  that ``run_jax_profile`` wrote: each moment is split among the ops running then (the two
  cores run independent ops side by side); "no traced op" is time with none running (XLA's
  own Eigen products run on worker threads without events, for one). "matmuls" are XLA's
  dot ops and YNNPACK fusions (dots here, and a few reductions)."""
  import gzip  # pylint: disable=import-outside-toplevel
  import re  # pylint: disable=import-outside-toplevel
  trace = next(folder.rglob("perfetto_trace.json.gz"))
  events = json.loads(gzip.open(trace).read())
  events = events["traceEvents"] if isinstance(events, dict) else events
  meta = {}
  for line in (folder / "hlo.txt").read_text().splitlines():
    m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = .*?op_name=\"([^\"]*)\"", line)
    if m:
      meta.setdefault(m.group(1), m.group(2))
  skip = ("ThunkExecutor", "$", "PjitFunction", "end:", "SlinkyThreadPool",
          "ThreadpoolListener", "while", "call")
  ops = [e for e in events if e.get("ph") == "X" and not e["name"].startswith(skip)]
  edges = sorted({e["ts"] for e in ops} | {e["ts"] + e["dur"] for e in ops})
  starts, ends = {}, {}
  for i, e in enumerate(ops):
    starts.setdefault(e["ts"], []).append(i)
    ends.setdefault(e["ts"] + e["dur"], []).append(i)
  share, active, idle = [0.0] * len(ops), set(), 0.0
  for a, b in zip(edges, edges[1:]):
    active -= set(ends.get(a, ()))
    active |= set(starts.get(a, ()))
    if active:
      for i in active:
        share[i] += (b - a) / len(active)
    else:
      idle += b - a
  parts, kinds = {}, {}
  for i, e in enumerate(ops):
    kind = ("matmul" if e["name"].startswith(("ynn_fusion", "dot")) else
            re.sub(r"\.\d+$", "", e["name"]))
    region = _region(meta.get(e["name"], ""))
    key = f"{region}: {'matmuls' if kind == 'matmul' else 'other ops'}"
    parts[key] = parts.get(key, 0.0) + share[i] / 1e6
    kinds[kind] = kinds.get(kind, 0.0) + share[i] / 1e6
  wall = (edges[-1] - edges[0]) / 1e6 if edges else 0.0
  top = lambda d, n: dict(sorted(d.items(), key=lambda kv: -kv[1])[:n])
  return {"wall_s": wall, "no_traced_op_s": idle / 1e6, "parts_s": top(parts, 30),
          "op_kinds_s": top(kinds, 12), "ops": len(ops)}


def run_jax_profile(spec: dict) -> dict:
  """``--profile``: system time and page faults of each timed step (``getrusage``), then one
  step under ``jax.profiler.trace`` into the folder, summarised by :func:`profile_summary`."""
  import resource  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from c2cjax import train  # pylint: disable=import-outside-toplevel

  folder = pathlib.Path(spec["profile"])
  c2c, tx, state, rparams, sparams, batch, split = _jax_state(spec)
  step = jax.jit(train.make_train_step(c2c, tx), donate_argnums=(0,),
                 static_argnames=("split",), compiler_options=c2c.xla_options)
  compiled = step.lower(state, rparams, sparams, batch, split=split).compile()
  folder.mkdir(parents=True)
  (folder / "hlo.txt").write_text(compiled.as_text())
  rows = []
  for r in range(spec["warmup"] + spec["steps"]):
    before, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    state, metrics = compiled(state, rparams, sparams, batch)
    jax.block_until_ready((state, metrics))
    wall, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    if r >= spec["warmup"]:
      rows.append({"step_s": wall, "user_s": after.ru_utime - before.ru_utime,
                   "system_s": after.ru_stime - before.ru_stime,
                   "minor_faults": after.ru_minflt - before.ru_minflt})
  with jax.profiler.trace(str(folder), create_perfetto_trace=True):
    t = time.perf_counter()
    state, metrics = compiled(state, rparams, sparams, batch)
    jax.block_until_ready((state, metrics))
    traced = time.perf_counter() - t
  return {"framework": "jax", "steps": rows, "traced_step_s": traced,
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
          "summary": profile_summary(folder)}


def report_profile(spec: dict, out: dict) -> None:
  print(f"shapes {spec['shapes']}: {spec['batch']} x {spec['seq']}; load average "
        f"{spec['loadavg']}; GLIBC_TUNABLES={out['glibc_tunables']}")
  for r in out["steps"]:
    print(f"  step {r['step_s']:.3f} s: user {r['user_s']:.2f} s, system {r['system_s']:.2f} s, "
          f"{r['minor_faults']:,} minor page faults")
  s = out["summary"]
  print(f"traced step {out['traced_step_s']:.3f} s ({s['ops']:,} op events; trace and HLO in "
        f"{spec['profile']}): wall {s['wall_s']:.3f} s, no traced op {s['no_traced_op_s']:.3f} s")
  for name, secs in s["parts_s"].items():
    print(f"  {secs:7.3f} s  {name}")
  print("  by op kind: " + ", ".join(f"{k} {v:.3f} s" for k, v in s["op_kinds_s"].items()))


# --- PyTorch side -------------------------------------------------------------------------
def _torch_modules():
  """The PyTorch fuser modules (defined lazily so the parent never imports torch)."""
  import torch  # pylint: disable=import-outside-toplevel
  from torch import nn  # pylint: disable=import-outside-toplevel
  from transformers import DynamicCache  # pylint: disable=import-outside-toplevel

  class Block(nn.Module):
    """``x + Dropout(W2(GELU(W1(RMSNorm(x)))))``, bias-free linears, exact GELU."""

    def __init__(self, hidden: int, width: int, dropout: float):
      super().__init__()
      self.norm = nn.RMSNorm(hidden, eps=1e-6)
      self.w1 = nn.Linear(hidden, width, bias=False)
      self.w2 = nn.Linear(width, hidden, bias=False)
      self.drop = nn.Dropout(dropout)

    def forward(self, x):
      return x + self.drop(self.w2(nn.functional.gelu(self.w1(self.norm(x)))))

  class Stack(nn.Module):

    def __init__(self, n: int, hidden: int, width: int, dropout: float):
      super().__init__()
      self.blocks = nn.ModuleList(Block(hidden, width, dropout) for _ in range(n))

    def forward(self, x):
      for blk in self.blocks:
        x = blk(x)
      return x

  class FuserLayer(nn.Module):
    """One receiver layer's fuser (C2CProjector naming, as ``c2cjax.fuse`` imports it)."""

    def __init__(self, ks: int, hs: int, kr: int, hr: int, hidden: int, inter: int,
                 num_layers: int, dropout: float):
      super().__init__()
      self.kr, self.hr = kr, hr
      for p in ("key", "value"):
        setattr(self, f"{p}_in", nn.Linear(ks * hs + kr * hr, hidden))
        setattr(self, f"{p}_mlp1", Stack(1, hidden, inter, dropout))
        setattr(self, f"{p}_proj_mlp2", Stack(num_layers - 2, hidden, inter, dropout))
        setattr(self, f"{p}_proj_out", nn.Linear(hidden, kr * hr))
        setattr(self, f"{p}_scalar_mlp2", Stack(1, hidden, hidden, dropout))
        setattr(self, f"{p}_scalar_head", nn.Linear(hidden, kr))
        setattr(self, f"{p}_gate_logit", nn.Parameter(torch.zeros(())))

    def _branch(self, p: str, s, r, tau):
      b, _, t, _ = r.shape
      r_tok = r.transpose(1, 2)  # [B, T, Kr, Hr]
      x = torch.cat([s.transpose(1, 2).reshape(b, t, -1), r_tok.reshape(b, t, -1)], -1)
      h = getattr(self, f"{p}_mlp1")(getattr(self, f"{p}_in")(x))
      proj = getattr(self, f"{p}_proj_out")(getattr(self, f"{p}_proj_mlp2")(h))
      w = getattr(self, f"{p}_scalar_head")(getattr(self, f"{p}_scalar_mlp2")(h))
      logit = getattr(self, f"{p}_gate_logit")
      if self.training:  # one standard Gumbel per row, head and token
        u = torch.rand(b, t, self.kr).clamp_(torch.finfo(r.dtype).tiny, 1.0)
        gate = torch.sigmoid((logit - torch.log(-torch.log(u))) / tau)
      else:
        gate = (logit > 0).to(r.dtype)
      scale = (gate * torch.sigmoid(w))[..., None]  # [B, T, Kr, 1]
      out = r_tok + scale * proj.reshape(b, t, self.kr, self.hr)
      return out.transpose(1, 2)

    def forward(self, sk, sv, rk, rv, tau=1.0):
      return self._branch("key", sk, rk, tau), self._branch("value", sv, rv, tau)

  class KeepCache(DynamicCache):
    """Cache of pass 2: the fused prefix ``[0, start)`` already in, and an ``update``
    that keeps the fused keys/values at the ``keep`` slots among the new tokens'.

    The receiver's pass 2 over the tokens from ``start`` on then attends to the fused
    entries at those slots and to fresh ones elsewhere, as ``keep`` does in c2cjax.
    """

    def __init__(self, keys, values, keep, start: int = 0):
      super().__init__()
      for i, (k, v) in enumerate(zip(keys, values)):
        if start:
          super().update(k[:, :, :start], v[:, :, :start], i)
      self._kept = [k[:, :, start:] for k in keys], [v[:, :, start:] for v in values]
      self._keep = keep[:, :, start:]  # [B, 1, T - start, 1] bool

    def update(self, key_states, value_states, layer_idx, *args, **kwargs):
      key_states = torch.where(self._keep, self._kept[0][layer_idx], key_states)
      value_states = torch.where(self._keep, self._kept[1][layer_idx], value_states)
      return super().update(key_states, value_states, layer_idx, *args, **kwargs)

  return FuserLayer, KeepCache


def last_aligned(num_receiver: int, num_sharer: int) -> list[tuple[int, int]]:
  """Mirror of ``c2cjax.fuse.last_aligned`` (checked equal by ``--check``)."""
  offset = num_sharer - num_receiver
  return [(t, t + offset) for t in range(num_receiver) if 0 <= t + offset < num_sharer]


def temperature(f: dict, step: int) -> float:
  """``c2cjax.fuse.temperature``: geometric annealing of the gate temperature."""
  frac = min(step, f["anneal_steps"]) / f["anneal_steps"]
  return f["initial_temperature"] * (f["final_temperature"] / f["initial_temperature"]) ** frac


class TorchC2C:
  """Frozen transformers receiver/sharer + trainable PyTorch fusers, one C2C step."""

  def __init__(self, spec: dict):
    import torch  # pylint: disable=import-outside-toplevel
    from transformers import AutoModelForCausalLM  # pylint: disable=import-outside-toplevel

    self.torch = torch
    FuserLayer, self.KeepCache = _torch_modules()  # pylint: disable=invalid-name
    torch.manual_seed(spec["seed"])

    def load(path):
      path = pathlib.Path(path)
      m = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                               dtype=torch.float32)
      return m.eval().requires_grad_(False)

    if spec["shapes"] == "paper":  # the published configs, random fp32 weights
      sys.path.insert(0, str(ROOT))
      from c2cjax.models import paper  # pylint: disable=import-outside-toplevel
      self.receiver, self.sharer = (
          AutoModelForCausalLM.from_config(paper.hf_config(n), dtype=torch.float32)
          .eval().requires_grad_(False) for n in paper.MODELS)
    else:
      self.receiver, self.sharer = load(spec["receiver_gguf"]), load(spec["sharer_gguf"])
    rc = self.receiver.config.get_text_config()
    sc = self.sharer.config.get_text_config()
    head = lambda c: getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    self.pairs = [tuple(p) for p in spec["pairs"]]
    self.split = spec.get("split") or None
    f = spec["fuser"]
    self.fuser_cfg = f
    self.fusers = torch.nn.ModuleList(
        FuserLayer(sc.num_key_value_heads, head(sc), rc.num_key_value_heads, head(rc),
                   f["hidden_dim"], f["intermediate_dim"], f["num_layers"], f["dropout"])
        for _ in self.pairs)
    o = spec["optimizer"]
    self.grad_clip = o["grad_clip"]
    # Constant lr: c2cjax's warm-up/decay schedule only changes one scalar per step.
    self.opt = torch.optim.AdamW(self.fusers.parameters(), lr=o["lr"], betas=(o["b1"], o["b2"]),
                                 weight_decay=o["weight_decay"])
    self.vocab = [rc.vocab_size, sc.vocab_size]
    self.step_count = 0

  def prefill(self, model, ids):
    """Cache-only prefill (base model, no LM head); per-layer keys and values lists."""
    with self.torch.no_grad():
      cache = model.model(input_ids=ids, use_cache=True).cache
    return [l.keys for l in cache.layers], [l.values for l in cache.layers]

  def nll(self, ids, sids, fuse_mask, loss_mask, tau, split=None):
    """Summed NLL over the target tokens and their count (``c2c_nll``, same ``split``)."""
    torch = self.torch
    t = ids.shape[1]
    start, fused_end = split or (0, t)
    rk, rv = self.prefill(self.receiver, ids[:, :fused_end])
    sk, sv = self.prefill(self.sharer, sids[:, :fused_end])
    keep = fuse_mask[:, None, :, None]
    pad = lambda x: torch.nn.functional.pad(x, (0, 0, 0, t - fused_end))
    fk, fv = [pad(k) for k in rk], [pad(v) for v in rv]
    for fuser, (ri, si) in zip(self.fusers, self.pairs):
      k, v = fuser(sk[si], sv[si], rk[ri], rv[ri], tau)
      fk[ri] = torch.where(keep, pad(k), fk[ri])
      fv[ri] = torch.where(keep, pad(v), fv[ri])
    cache = self.KeepCache(fk, fv, keep, start)
    logits = self.receiver(input_ids=ids[:, start:], cache=cache, use_cache=True).logits
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    nll = -torch.gather(logp, -1, ids[:, start + 1:, None].long())[..., 0]
    w = loss_mask[:, start + 1:].float()
    return (nll * w).sum(), w.sum()

  def train_step(self, batch) -> dict:
    """One optimizer step over the ``A`` micro-batches of ``batch`` (torch tensors)."""
    torch = self.torch
    self.fusers.train()
    self.opt.zero_grad(set_to_none=True)
    tau = temperature(self.fuser_cfg, self.step_count)
    total, count = 0.0, 0.0
    for a in range(batch["receiver_ids"].shape[0]):
      fuse_mask = (batch["fuse_mask"][a] * batch["attention_mask"][a]).bool()
      s, n = self.nll(batch["receiver_ids"][a], batch["sharer_ids"][a], fuse_mask,
                      batch["loss_mask"][a], tau, self.split)
      s.backward()
      total, count = total + s.detach(), count + n
    denom = max(float(count), 1.0)
    for p in self.fusers.parameters():
      if p.grad is not None:
        p.grad.div_(denom)
    grad_norm = torch.nn.utils.clip_grad_norm_(self.fusers.parameters(), self.grad_clip)
    self.opt.step()
    self.step_count += 1
    return {"loss": float(total) / denom, "tokens": float(count),
            "grad_norm": float(grad_norm)}


def _jax_batch(batch_np):
  """c2cjax batches carry a tuple of sharer ids, one per sharer."""
  return dict(batch_np, sharer_ids=(batch_np["sharer_ids"],))


def _torch_batch(batch_np):
  import torch  # pylint: disable=import-outside-toplevel
  return {k: torch.from_numpy(v).long() if k.endswith("ids") else torch.from_numpy(v)
          for k, v in batch_np.items()}


def run_torch(spec: dict) -> dict:
  """The eager PyTorch step on the same synthetic batch."""
  import torch  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count())
  mem = PeakRSS()
  t0 = time.perf_counter()
  model = TorchC2C(spec)
  batch = _torch_batch(synthetic_batch(spec, *model.vocab))
  load_s = time.perf_counter() - t0
  rss_loaded = mem.rss_mib()
  mem.reset()
  t0 = time.perf_counter()
  for _ in range(spec["warmup"]):
    model.train_step(batch)
  warmup_s = (time.perf_counter() - t0) / max(spec["warmup"], 1)
  peak_warm = mem.peak_mib()
  times, timed = _timed_steps(lambda: model.train_step(batch), spec["steps"], mem)
  metrics = model.train_step(batch)
  return {
      "framework": "torch", "version": torch.__version__, "threads": torch.get_num_threads(),
      "load_s": load_s, "compile_s": 0.0, "first_steps_s": warmup_s,
      "step_times_s": times, "rss_loaded_mib": rss_loaded,
      "peak_compile_warmup_mib": peak_warm, **timed, "peak_rss_resettable": mem.resettable,
      "loss": metrics["loss"], "targets": metrics["tokens"],
      "fuser_params": sum(p.numel() for p in model.fusers.parameters()),
      "layer_map": model.pairs, "vocab": model.vocab,
  }


# --- parity check (both frameworks in one process) ----------------------------------------
def run_check(spec: dict) -> None:
  """Same fuser weights in both: loss and fuser grad norm agree in eval mode.

  Gates are hard in eval mode, so the gate logits are set to +1 (open) for a
  non-trivial check; dropout is off; no optimizer step.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import optax  # pylint: disable=import-outside-toplevel
  import torch  # pylint: disable=import-outside-toplevel
  from c2cjax import fuse as fuse_lib, train  # pylint: disable=import-outside-toplevel

  torch.set_num_threads(os.cpu_count())
  cfg = _load_config(pathlib.Path(spec["config"]))
  c2c = train.build_c2c(cfg, jax.random.PRNGKey(0))
  tm = TorchC2C(spec)
  lm = c2c.fusers[0].layer_map
  assert tm.pairs == lm.pairs(), (tm.pairs, lm.pairs())
  with torch.no_grad():
    for f in tm.fusers:
      f.key_gate_logit.fill_(1.0)
      f.value_gate_logit.fill_(1.0)
  fcfg = c2c.fusers[0].config
  per_layer = [fuse_lib.params_from_state_dict(
      {k: v.detach().numpy() for k, v in f.state_dict().items()}, fcfg) for f in tm.fusers]
  fparams = (jax.tree.map(lambda *x: jnp.stack(x), *per_layer),)
  batch_np = synthetic_batch(spec, *tm.vocab)
  mb = jax.tree.map(lambda x: jnp.asarray(x[0]), _jax_batch(batch_np))

  def f(p):
    return train.c2c_nll(c2c, p, c2c.receiver.params, tuple(s.params for s in c2c.sharers),
                         mb, train=False, split=tuple(spec["split"]))

  (s, n), g = jax.value_and_grad(f, has_aux=True)(fparams)
  jax_loss, jax_gn = float(s / n), float(optax.tree.norm(g)) / float(n)
  tm.fusers.eval()
  tb = _torch_batch(batch_np)
  ts, tn = tm.nll(tb["receiver_ids"][0], tb["sharer_ids"][0], tb["fuse_mask"][0].bool(),
                  tb["loss_mask"][0], 1.0, tuple(spec["split"]))
  ts.backward()
  # Sum of squares in float64: a float32 norm over 20M entries is off by ~0.2%.
  sq = sum(p.grad.double().square().sum() for p in tm.fusers.parameters()
           if p.grad is not None)
  torch_loss = (ts / tn).item()
  torch_gn = math.sqrt(float(sq)) / tn.item()
  print(f"eval-mode loss: jax {jax_loss:.6f} torch {torch_loss:.6f}; fuser grad norm: "
        f"jax {jax_gn:.6e} torch {torch_gn:.6e}")
  ok = (math.isclose(jax_loss, torch_loss, rel_tol=1e-3)
        and math.isclose(jax_gn, torch_gn, rel_tol=1e-3))
  print("parity check", "passed" if ok else "FAILED")
  if not ok:
    sys.exit(1)


# --- driver -------------------------------------------------------------------------------
# Shapes: (batch, seq) defaults, fuser sizes and which models.
SHAPES = {
    "local": "configs/local.py's pair and fuser (last_aligned)",
    "paper": "random Qwen3-0.6B <- Qwen2.5-0.5B-Instruct at their published configs, fuser "
             "hidden 1024 x 3 layers on all 28 receiver layers (the released map)",
    "original": "the offline pair with the original code's measured fuser: hidden 1024 x 3 "
                "layers, 30 projectors (the released map), ~417M trainable params",
}
# The original PyTorch code's fuser training step at the "original" shapes (issue 16:
# batch 4 x 256, fp32, this machine kind) and the goal set against it.
ORIGINAL = {"step_s": 11.56, "peak_gib": 10.5, "goal_step_s": 5.8, "goal_peak_gib": 5.0}
# What --original reads from a benchmarks/original_train.py --json record.
_ORIGINAL_KEYS = ("median_step_s", "peak_timed_mib", "date", "anomaly_detection",
                  "glibc_tunables")


def _spec(args) -> dict:
  """Everything a child needs, resolved in the parent (children need no config import)."""
  sys.path.insert(0, str(ROOT))
  from c2cjax import offline, train  # pylint: disable=import-outside-toplevel
  from c2cjax.models import paper  # pylint: disable=import-outside-toplevel
  cfg = _load_config(pathlib.Path(args.config))
  if tuple(cfg.sharers) != ("offline:gemma3",) or cfg.receiver != "offline:smollm2":
    raise SystemExit(f"{args.config} is not the local pair (receiver {cfg.receiver}, "
                     f"sharers {tuple(cfg.sharers)}); the PyTorch side loads those GGUFs")
  if cfg.layer_map != "last_aligned" or cfg.self_fusion or cfg.llm_dtype != "float32":
    raise SystemExit("the PyTorch side implements last_aligned, one sharer, float32 only")
  fuser = dict(cfg.fuser)
  if args.shapes == "local":
    n_r, n_s = 30, 18  # SmolLM2-135M, Gemma-3-270M
    pairs = last_aligned(n_r, n_s)
  else:
    fuser.update(hidden_dim=1024, intermediate_dim=1024, num_layers=3)
    if args.shapes == "paper":
      n_r, n_s = (paper.hf_config(n).num_hidden_layers for n in paper.MODELS)
    else:
      n_r, n_s = 30, 18
    pairs = released_map(n_r, n_s)
  seq = args.seq or (128 if args.shapes == "local" else 256)
  if seq < 4 or seq % 2:
    raise SystemExit("--seq must be even and >= 4")
  spec = {
      "config": str(pathlib.Path(args.config).resolve()), "seed": args.seed,
      "shapes": args.shapes, "accum": args.accum, "batch": args.batch, "seq": seq,
      "steps": args.steps, "warmup": args.warmup, "receiver_gguf": str(offline.smollm2_gguf()),
      "sharer_gguf": str(offline.gemma3_gguf()), "fuser": fuser, "pairs": pairs,
      "optimizer": dict(cfg.optimizer), "pass2_parts": args.pass2_parts,
      "pairs_at_once": args.pairs_at_once,
  }
  spec["split"] = list(train.pass2_split(synthetic_batch(spec, 2, 2), args.pass2_parts))
  return spec


def _child(framework: str, spec: dict) -> dict:
  cmd = [sys.executable, __file__, "--_child", framework, "--_spec", json.dumps(spec)]
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
  if spec["glibc_tunables"] is not None:  # both frameworks run under the same malloc
    env["GLIBC_TUNABLES"] = spec["glibc_tunables"]
  proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(_RESULT)]
  if proc.returncode or not lines:  # progress bars and warnings only shown on failure
    raise SystemExit(f"{framework} child failed (exit {proc.returncode}):\n"
                     f"{proc.stdout}\n{proc.stderr[-5000:]}")
  return json.loads(lines[-1][len(_RESULT):])


def _cpu_name() -> str:
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _loadavg() -> str:
  try:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())
  except OSError:
    return "n/a"


def report(spec: dict, results: dict[str, dict]) -> None:
  a, b, t = spec["accum"], spec["batch"], spec["seq"]
  seen = a * b * t
  v = lambda name: (importlib.metadata.version(name)
                    if importlib.util.find_spec(name) else "absent")
  print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC")
  print(f"machine: {_cpu_name()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM; "
        f"load average before run {spec['loadavg']}")
  print(f"versions: python {platform.python_version()}, jax {v('jax')}, flax {v('flax')}, "
        f"torch {v('torch')}, transformers {v('transformers')}")
  f = spec["fuser"]
  any_r = next(iter(results.values()))
  pair = ("random Qwen3-0.6B <- random Qwen2.5-0.5B-Instruct (published configs)"
          if spec["shapes"] == "paper" else
          f"{pathlib.Path(spec['receiver_gguf']).name} <- sharer "
          f"{pathlib.Path(spec['sharer_gguf']).name}")
  print(f"shapes: {spec['shapes']}; pair: receiver {pair}, fp32; fuser hidden {f['hidden_dim']}, "
        f"intermediate {f['intermediate_dim']}, {f['num_layers']} layers, "
        f"{len(any_r['layer_map'])} fused receiver layers "
        f"({any_r['layer_map'][0][0]}..{any_r['layer_map'][-1][0]}), "
        f"{any_r['fuser_params'] / 1e6:.2f}M trainable params")
  print(f"batch: A={a} x B={b} x T={t} = {seen} tokens/step (fuse first {t // 2}, "
        f"loss on the rest: {int(any_r['targets'])} targets/step); "
        f"{spec['warmup']} warm-up + median of {spec['steps']} steps")
  start, fused_end = spec["split"]
  if start == 0 and fused_end == t:
    print("pass 2 (both): receiver over the whole sequence, fused slots kept (same work)")
  else:
    print(f"split (both, same work): pass 1 (prefills + fuser) on tokens [0, {fused_end}), "
          f"pass 2 on [{start}, {t}) reading the fused cache before {start} "
          f"(--pass2-parts {spec['pass2_parts']}; 0 reruns the whole sequence)")
  if spec.get("pairs_at_once", 1) != 1:
    print(f"JAX: each fuser computes {spec['pairs_at_once']} layer pairs together "
          f"(--pairs-at-once)")
  tunables = spec["glibc_tunables"] or os.environ.get("GLIBC_TUNABLES")
  print(f"malloc (both): GLIBC_TUNABLES={tunables}"
        + (" -- transparent huge pages, as `python -m c2cjax.train` runs (--no-hugepages: "
           "without)" if spec["glibc_tunables"] else ""))
  print("jax process: " + ("torch hidden, as on an install without it (--jax-imports-torch "
                           "to let transformers import it)" if spec.get("hide_torch", False)
                           else "torch importable (transformers imports it)"))
  rows = {}
  for name, r in results.items():
    med = statistics.median(r["step_times_s"])
    rows[name] = {"step": med, "tok": seen / med, "tgt": r["targets"] / med, **r}
  hdr = (f"{'':>8} {'step s':>8} {'min..max':>13} {'tok/s':>8} {'target/s':>9} "
         f"{'compile s':>9} {'warm-up s':>10} {'RSS load':>9} {'peak warm':>9} "
         f"{'peak step':>9} {'- load':>7} {'- pre':>6}")
  print(hdr)
  for name, r in rows.items():
    ts = r["step_times_s"]
    print(f"{name:>8} {r['step']:>8.3f} {min(ts):>6.2f}..{max(ts):<6.2f} {r['tok']:>8.0f} "
          f"{r['tgt']:>9.0f} {r['compile_s']:>9.1f} {r['first_steps_s']:>10.2f} "
          f"{r['rss_loaded_mib']:>8.0f}M {r['peak_compile_warmup_mib']:>8.0f}M "
          f"{r['peak_timed_mib']:>8.0f}M {r['peak_timed_mib'] - r['rss_loaded_mib']:>6.0f}M "
          f"{r['peak_timed_delta_mib']:>5.0f}M")
  print("(warm-up s: mean of the untimed steps after compile; "
        "RSS in MiB: after loading models + batch; peak during compile + warm-up; peak "
        "during the timed steps; that peak minus RSS after loading; minus RSS just before "
        "the timed steps -- the last depends on what the allocator kept from warm-up)")
  for name, r in rows.items():
    stats = r.get("device_memory_stats")
    if name == "jax":
      print(f"jax device memory_stats(): {stats if stats else 'None on CPU -> RSS only'}")
    print(f"{name} loss after the timed steps: {r['loss']:.4f}")
  if not all(r["peak_rss_resettable"] for r in rows.values()):
    print("note: /proc/self/clear_refs unavailable: peaks are ru_maxrss since process start")
  if "jax" in rows and "torch" in rows:
    j, p = rows["jax"], rows["torch"]
    peak = j["peak_timed_mib"] / p["peak_timed_mib"]
    over = lambda r: r["peak_timed_mib"] - r["rss_loaded_mib"]
    print(f"JAX/PyTorch: throughput x{j['tok'] / p['tok']:.2f}, step time "
          f"x{j['step'] / p['step']:.2f}, peak RSS (timed) x{peak:.2f}, "
          f"peak RSS above the loaded models x{over(j) / max(over(p), 1e-9):.2f}")
    print(f"RATIO {spec['shapes']} throughput jax/torch {j['tok'] / p['tok']:.2f} (goal >= 1.5); "
          f"peak RSS jax/torch {peak:.2f} (goal <= 1.0)")
  if spec["shapes"] == "original" and "jax" in rows:
    j, o = rows["jax"], ORIGINAL
    gib = j["peak_timed_mib"] / 1024
    print(f"RATIO original: c2cjax {j['step']:.2f} s/step, peak RSS {gib:.2f} GiB vs the "
          f"original PyTorch code's {o['step_s']} s and {o['peak_gib']} GiB (issue 16, stored: "
          f"measured on another day): x{o['step_s'] / j['step']:.2f} faster, "
          f"x{gib / o['peak_gib']:.2f} memory; goal <= {o['goal_step_s']} s and <= "
          f"{o['goal_peak_gib']} GiB")
    for path in spec.get("original_json") or ():
      r = json.loads(pathlib.Path(path).read_text())
      rs, rg = r["median_step_s"], r["peak_timed_mib"] / 1024
      print(f"RATIO original vs {pathlib.Path(path).name}: the released code's step {rs:.2f} s, "
            f"peak RSS {rg:.2f} GiB ({r['date']}, anomaly detection "
            f"{'on' if r['anomaly_detection'] else 'off'}, GLIBC_TUNABLES="
            f"{r['glibc_tunables']}): c2cjax x{rs / j['step']:.2f} faster (goal >= 2), "
            f"x{gib / rg:.2f} memory")


def main():
  sys.path.insert(0, str(ROOT))
  from c2cjax.config_check import count_arg  # pylint: disable=import-outside-toplevel
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--config", default=str(ROOT / "configs" / "local.py"))
  ap.add_argument("--accum", type=count_arg(1), default=1, help="A: micro-batches per step")
  ap.add_argument("--shapes", choices=sorted(SHAPES), default="local",
                  help="; ".join(f"{k}: {v}" for k, v in SHAPES.items()))
  ap.add_argument("--batch", type=count_arg(1), default=4, help="B: rows per micro-batch")
  ap.add_argument("--seq", type=int, default=None,
                  help="T: tokens per row (default 128 local, 256 paper/original)")
  ap.add_argument("--pass2-parts", type=count_arg(0), default=8,
                  help="pass 2 after the fused prefix at multiples of T / this, or one "
                       "slot before the fused end (train.pass2_split; both frameworks); 0: "
                       "rerun the whole sequence")
  ap.add_argument("--pairs-at-once", type=count_arg(1), default=1,
                  help="JAX: fuser layer pairs computed together (C2C pairs_at_once; the same "
                       "results)")
  ap.add_argument("--steps", type=count_arg(1), default=10, help="timed steps (median reported)")
  ap.add_argument("--rounds", type=count_arg(1), default=1,
                  help="run the frameworks alternately this many times (steps pooled)")
  ap.add_argument("--warmup", type=count_arg(0), default=2, help="untimed steps after compile")
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--frameworks", nargs="+", default=["jax", "torch"],
                  choices=["jax", "torch"])
  ap.add_argument("--json", help="also write the spec and raw per-framework results here")
  ap.add_argument("--check", action="store_true",
                  help="only check that both compute the same loss and gradient")
  ap.add_argument("--jax-imports-torch", action="store_true",
                  help="let the JAX process import torch, as transformers does when torch "
                       "is installed (default: hidden there, as on an install without it)")
  ap.add_argument("--xla-ab", type=count_arg(0), default=0, metavar="N",
                  help="JAX only: compile the step under each XLA:CPU option set (XLA's "
                       "default, YNNPACK off, YNNPACK for dots only) and time N paired rounds")
  ap.add_argument("--original", nargs="+", default=None, metavar="JSON",
                  help="with --shapes original: also compare with the released code's step "
                       "from these benchmarks/original_train.py --json files (run beside this)")
  ap.add_argument("--no-hugepages", action="store_true",
                  help="run both frameworks without the transparent-huge-page malloc tunable "
                       "that `python -m c2cjax.train` restarts with on CPU "
                       "(c2cjax.runtime.hugepage_env)")
  ap.add_argument("--profile", metavar="DIR",
                  help="JAX only: page faults and system time of each timed step, then one "
                       "step traced with jax.profiler into DIR (a new folder) and where its "
                       "wall time went, by part of the step and op kind")
  ap.add_argument("--_child", choices=["jax", "torch"], help=argparse.SUPPRESS)
  ap.add_argument("--_spec", help=argparse.SUPPRESS)
  args = ap.parse_args()
  for path in args.original or ():
    if args.shapes != "original":
      ap.error("--original goes with --shapes original")
    if not pathlib.Path(path).is_file():
      ap.error(f"--original {path}: no such file (benchmarks/original_train.py --json)")
    try:
      record = json.loads(pathlib.Path(path).read_text())
      missing = sorted(set(_ORIGINAL_KEYS) - set(record))
    except (ValueError, TypeError, AttributeError) as e:
      missing = [f"(not a JSON object: {e})"]
    if missing:
      ap.error(f"--original {path} is not an original_train.py --json record: no "
               f"{', '.join(missing)}")
  if args.profile and pathlib.Path(args.profile).exists():
    ap.error(f"--profile {args.profile} already exists; choose a new folder")
  if args.json and pathlib.Path(args.json).exists():  # before any model loads
    ap.error(f"--json {args.json} already exists; choose a new path (results are never "
             "overwritten)")

  if args._child:  # pylint: disable=protected-access
    spec = json.loads(args._spec)  # pylint: disable=protected-access
    if args._child == "jax" and spec.get("hide_torch"):  # pylint: disable=protected-access
      # As on an install without torch: c2cjax never uses it, but transformers' config
      # classes import it (~200 MiB) whenever it is installed, as it is here for the
      # PyTorch side. A None entry makes find_spec say "absent" and `import torch` fail.
      sys.modules["torch"] = None
    if args._child == "jax":
      out = (run_jax_xla_ab(spec) if spec.get("xla_ab") else
             run_jax_profile(spec) if spec.get("profile") else run_jax(spec))
    else:
      out = run_torch(spec)
    print(_RESULT + json.dumps(out), flush=True)
    return
  spec = _spec(args)
  spec["loadavg"] = _loadavg()
  spec["hide_torch"] = not args.jax_imports_torch
  spec["original_json"] = [str(pathlib.Path(p).resolve()) for p in args.original or ()]
  from c2cjax import runtime  # pylint: disable=import-outside-toplevel
  env = None if args.no_hugepages else runtime.hugepage_env()
  spec["glibc_tunables"] = None if env is None else env["GLIBC_TUNABLES"]
  if args.profile:
    spec["profile"] = str(pathlib.Path(args.profile).resolve())
    report_profile(spec, _child("jax", spec))
    return
  if args.xla_ab:
    spec["xla_ab"] = args.xla_ab
    report_xla_ab(spec, _child("jax", spec))
    return
  if args.check:
    if args.shapes != "local":
      raise SystemExit("--check runs on the local shapes only")
    run_check(spec)
    return
  # Frameworks alternate, round after round: this VM's speed drifts by 20% within minutes,
  # so one run of each, back to back, can favour either side.
  rounds = [{fw: _child(fw, spec) for fw in args.frameworks} for _ in range(args.rounds)]
  results = merge_rounds(rounds)
  report(spec, results)
  if len(rounds) > 1 and len(args.frameworks) == 2:
    for i, r in enumerate(rounds):
      j, p = (statistics.median(r[fw]["step_times_s"]) for fw in ("jax", "torch"))
      print(f"round {i + 1}: step {j:.3f} s (jax) vs {p:.3f} s (torch): throughput "
            f"x{p / j:.2f}; peak RSS x{r['jax']['peak_timed_mib'] / r['torch']['peak_timed_mib']:.2f}")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps({"spec": spec, "rounds": rounds}, indent=1))


def merge_rounds(rounds: list[dict[str, dict]]) -> dict[str, dict]:
  """One result per framework over all rounds: every timed step pooled (the table's median
  and min..max are over all of them), the largest peaks and RSS, mean compile/warm-up."""
  out = {}
  for fw in rounds[0]:
    rs = [r[fw] for r in rounds]
    out[fw] = {**rs[-1], "step_times_s": [t for r in rs for t in r["step_times_s"]]}
    for k in ("peak_timed_mib", "peak_compile_warmup_mib", "rss_loaded_mib",
              "peak_timed_delta_mib"):
      out[fw][k] = max(r[k] for r in rs)
    for k in ("compile_s", "first_steps_s"):
      out[fw][k] = statistics.mean(r[k] for r in rs)
  return out


if __name__ == "__main__":
  main()
