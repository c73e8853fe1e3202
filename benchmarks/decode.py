"""Decode throughput of ``LM.generate`` vs transformers' ``generate`` on the same model.

    python benchmarks/decode.py [--model smollm2|gemma3|PATH] [--new 64] [--batches 1 8]
        [--prompt-tokens 0 124] [--layouts scanned unscanned unscanned-bf16] [--ab 10]

``--prompt-tokens``: 0 is the short story prompt (42 tokens with SmolLM2's template); N
lengthens its user message until the templated prompt has at least N tokens (124: the
C2C query of issue 16). ``--layouts``: stacked layers under ``nn.scan`` (the default
``LM``) and/or one unrolled block per layer (``LM.with_layout(scan_layers=False)``), and/or
that with its weight matrices stored in bfloat16 and fp32 activations
(``with_layout(weight_dtype=jnp.bfloat16)``, "unscanned-bf16": half the bytes to read; its
greedy tokens are compared with the fp32 model's, and its row also gives the floor of its
own bytes).

Both run fp32 greedy on the same prompt with the same token budget (EOS ignored), in one
process, after a warm-up call each. Also prints the memory-bandwidth floor for batch-1
decode: bytes of weights read per token / this machine's measured bandwidth, against
c2cjax's time per decode step alone (a generate of ``--new`` tokens minus one of 1 token,
so the prompt's prefill is not counted).

Batch-1 products on CPU go through c2cjax's matrix-vector kernel
(``c2cjax.kernels.matvec``); run with ``C2CJAX_CPU_MATVEC=0`` for XLA's own. ``--ab N``
also compares the two in this one process: for each batch-1 case, a copy of the model
with ``kernel=False`` (``LM.with_layout``) alternates with it for N rounds; it prints
both medians and the median of the per-round differences (for "unscanned-bf16": against
the fp32 per-layer model with the kernel). On a VM whose speed drifts by 20% between
minutes, paired rounds are what can tell a few percent apart.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import jax

from c2cjax.config_check import count_arg


def measure_bandwidth(mb: int = 1024, reps: int = 10) -> float:
  """Bytes/s of a large streaming read on all cores.

  A jitted XLA reduction over a buffer far bigger than the caches uses every core, as the
  decode step does; a single-threaded NumPy sum would understate the machine (and put the
  "floor" below what we already reach).
  """
  a = jax.numpy.ones((mb * 2**20 // 4,), jax.numpy.float32)
  total = jax.jit(jax.numpy.sum)
  total(a).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    total(a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return a.nbytes / best


def gemv_chain_seconds(params, hidden: int, reps: int = 10, product=None) -> float:
  """Seconds of one batch-1 pass of matrix-vector products over every weight matrix in
  ``params`` (per-layer arrays, as the unscanned layout stores them), chained so they run
  one after another, and nothing else: the fastest XLA's own CPU matmuls read these
  weights. The gap between it and the bandwidth floor is the backend's (its matrix-vector
  kernels do not stream at the all-core bandwidth), not the model code's. ``product``:
  ``(x, m, out_in) -> x . m`` with ``m`` stored ``[out, in]`` when ``out_in`` (the tied
  embedding as LM head, read in place as the model does); default XLA's einsum, c2cjax's
  kernel is ``kernels.matvec.linear``. ``x`` is fp32 whatever the weights' dtype.
  """
  product = product or (lambda x, m, out_in: jax.numpy.einsum(
      "bi,oi->bo" if out_in else "bi,io->bo", x, m))
  mats = []
  for path, w in jax.tree_util.tree_leaves_with_path(params):
    if w.ndim < 2:
      continue
    if "embed" in jax.tree_util.keystr(path):  # the tied LM head: [V, D] . [D]
      mats.append((w, True))
    elif w.shape[0] == hidden:  # [D, ...] (q, k, v, gate, up)
      mats.append((w.reshape(hidden, -1), False))
    else:  # [..., D] (o, down)
      mats.append((w.reshape(-1, w.shape[-1]), False))
  flags = tuple(out_in for _, out_in in mats)

  @jax.jit
  def chain(ms):
    acc = jax.numpy.zeros((), jax.numpy.float32)
    for m, out_in in zip(ms, flags):  # each product waits for the previous one's scalar
      x = jax.numpy.full((1, m.shape[1] if out_in else m.shape[0]), 1.0 + 1e-9 * acc,
                         jax.numpy.float32)
      acc = acc + jax.numpy.sum(product(x, m, out_in))
    return acc

  ms = [m for m, _ in mats]
  return _time(lambda: jax.block_until_ready(chain(ms)), reps)


def _time(fn, reps: int) -> float:
  fn()  # warm-up / compile
  best = float("inf")
  for _ in range(reps):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--model", default="smollm2")
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--batches", type=count_arg(1), nargs="+", default=[1, 8])
  ap.add_argument("--reps", type=count_arg(1), default=3)
  ap.add_argument("--prompt-tokens", type=count_arg(0), nargs="+", default=[0])
  ap.add_argument("--layouts", nargs="+", default=["scanned"],
                  choices=["scanned", "unscanned", "unscanned-bf16"])
  ap.add_argument("--ab", type=int, default=0, metavar="N",
                  help="also alternate the kernel and XLA's products for N paired rounds")
  args = ap.parse_args()
  if args.new < 2:
    ap.error("--new must be at least 2 (the decode step is timed as new tokens minus one)")
  if args.ab < 0:
    ap.error(f"--ab must be a number of rounds >= 0, got {args.ab}")

  import jax.numpy as jnp
  import torch
  import transformers as tf

  from c2cjax import load_model, offline
  from c2cjax.kernels import matvec

  path = {"smollm2": offline.smollm2_gguf, "gemma3": offline.gemma3_gguf}.get(
      args.model, lambda: args.model)()
  lm = load_model(path)
  hf = tf.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                               dtype=torch.float32).eval()
  tok = lm.tokenizer

  def prompt_ids(n: int) -> list[int]:
    text = "Write a short story about a robot who learns to paint."
    extra = (" It should describe the studio, the colours, the first failed attempts and "
             "what the robot finally understands about art.").split()
    for k in range(len(extra) * 20 + 1):
      msg = text + " " + " ".join(extra[i % len(extra)] for i in range(k)) if k else text
      if tok.chat_template:
        msg = tok.apply_chat_template([{"role": "user", "content": msg}],
                                      add_generation_prompt=True, tokenize=False)
      ids = tok(msg, add_special_tokens=not tok.chat_template)["input_ids"]
      if len(ids) >= n:
        return ids
    raise SystemExit(f"could not build a {n}-token prompt")

  n_params = sum(x.size for x in jax.tree.leaves(lm.params))
  weight_bytes = n_params * 4
  bw = measure_bandwidth()
  floor = bw / weight_bytes
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}")
  print(f"model: {path.name}, {n_params / 1e6:.1f}M params, fp32 weights {weight_bytes / 2**20:.0f} "
        f"MiB; measured read bandwidth {bw / 1e9:.1f} GB/s -> batch-1 floor {floor:.1f} tok/s")
  print(f"{args.new} new tokens, greedy, EOS ignored; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
  torch.set_num_threads(os.cpu_count())
  hf_times = {}
  models = {"scanned": lm}
  if "unscanned" in args.layouts:
    models["unscanned"] = lm.with_layout(scan_layers=False)
  flat = models.get("unscanned") or lm.with_layout(scan_layers=False)
  if "unscanned-bf16" in args.layouts:
    models["unscanned-bf16"] = flat.with_layout(weight_dtype=jnp.bfloat16)
  own_bytes = {name: sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(m.params))
               for name, m in models.items()}
  ceiling = gemv_chain_seconds(flat.params, lm.config.hidden_size)
  print(f"XLA matrix-vector products over the same weights alone: {1e3 * ceiling:.1f} ms/token "
        f"({weight_bytes / ceiling / 1e9:.1f} GB/s): the most XLA's CPU matmuls allow")
  kernel = matvec.active()
  if kernel:
    kernel_product = lambda x, m, out_in: matvec.linear(x, m, out_in=out_in)
    chain = gemv_chain_seconds(flat.params, lm.config.hidden_size, product=kernel_product)
    print(f"c2cjax's matrix-vector kernel over the same weights alone: {1e3 * chain:.1f} "
          f"ms/token ({weight_bytes / chain / 1e9:.1f} GB/s); the models below use it")
    if "unscanned-bf16" in models:
      narrow = models["unscanned-bf16"]
      chain16 = gemv_chain_seconds(narrow.params, lm.config.hidden_size,
                                   product=kernel_product)
      print(f"... over the same weights stored in bf16 ({own_bytes['unscanned-bf16'] / 2**20:.0f} "
            f"MiB): {1e3 * chain16:.1f} ms/token "
            f"({own_bytes['unscanned-bf16'] / chain16 / 1e9:.1f} GB/s)")
  else:
    print("c2cjax's matrix-vector kernel: off (C2CJAX_CPU_MATVEC=0, no compiler, or not CPU); "
          "the models below use XLA's products")
  timings = []
  for n_prompt, layout, b in ((n, l, b) for n in args.prompt_tokens for l in args.layouts
                              for b in args.batches):
    ids = prompt_ids(n_prompt)
    model = models[layout]
    prompts = [ids] * b
    ours = _time(lambda: model.generate(prompts, max_new_tokens=args.new, eos_ids=[],
                                        return_tokens=True), args.reps)
    first = _time(lambda: model.generate(prompts, max_new_tokens=1, eos_ids=[],
                                         return_tokens=True), args.reps)
    step = (ours - first) / (args.new - 1)  # one decode step, without the prefill
    x = torch.tensor(prompts)

    def hf_gen():
      with torch.no_grad():
        hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new,
                    min_new_tokens=args.new, do_sample=False, pad_token_id=0)

    if (len(ids), b) not in hf_times:  # once per prompt and batch, whatever the layout
      hf_times[len(ids), b] = _time(hf_gen, args.reps)
    theirs = hf_times[len(ids), b]
    ours_tps, hf_tps = b * args.new / ours, b * args.new / theirs
    timings.append((len(ids), layout, b, ours_tps, hf_tps, step))
    if layout == "unscanned-bf16" and b == 1:  # what storing the weights in bf16 changes
      same = [list(jax.device_get(m.generate([ids], max_new_tokens=args.new, eos_ids=[],
                                             return_tokens=True)[0])[0])
              for m in (model, flat)]
      agree = next((i for i, (a, c) in enumerate(zip(*same)) if a != c), len(same[0]))
      print(f"unscanned-bf16, prompt {len(ids)}: greedy tokens equal the fp32 model's for the "
            f"first {agree} of {len(same[0])}")
  # The VM's read bandwidth moves within minutes (30-67 GB/s seen): measure it again after
  # the runs and take the larger figure, the stricter floor.
  bw2 = measure_bandwidth()
  floor = max(bw, bw2) / weight_bytes
  print(f"read bandwidth before / after the runs: {bw / 1e9:.1f} / {bw2 / 1e9:.1f} GB/s -> "
        f"floor {floor:.1f} tok/s ({1e3 / floor:.1f} ms/token); XLA's matrix-vector chain "
        f"{100 / (ceiling * floor):.0f}% of it")
  print(f"{'prompt':>6} {'layout':>9} {'batch':>5} {'c2cjax tok/s':>13} {'HF tok/s':>9} "
        f"{'ratio':>6} {'step ms':>8} {'% of floor':>10}")
  for n_ids, layout, b, ours_tps, hf_tps, step in timings:
    print(f"{n_ids:>6} {layout:>9} {b:>5} {ours_tps:>13.1f} {hf_tps:>9.1f} "
          f"{ours_tps / hf_tps:>6.2f} {1e3 * step:>8.2f} {100 / (step * floor):>9.0f}%")
    if b == 1:
      own = ""
      if own_bytes[layout] != weight_bytes:  # bf16 matrices: the floor of the bytes it reads
        own = (f", {100 * own_bytes[layout] / weight_bytes / (step * floor):.0f}% of the "
               f"floor of its own {own_bytes[layout] / 2**20:.0f} MiB")
      print(f"RATIO decode prompt {n_ids} {layout}: {100 / (step * floor):.0f}% of the "
            f"bandwidth floor (fp32 weights; goal >= 80%; decode step {1e3 * step:.2f} ms)"
            f"{own}, {100 * ceiling / step:.0f}% of XLA's matrix-vector chain, "
            f"x{ours_tps / hf_tps:.2f} transformers (tok/s with prefill)")
  if args.ab and kernel:
    for n_prompt, layout in ((n, l) for n in args.prompt_tokens for l in args.layouts):
      model = models[layout]
      other = (("fp32", models.get("unscanned") or flat) if layout == "unscanned-bf16"
               else ("XLA", model.with_layout(kernel=False)))  # a static field: own program
      paired_rounds(model, other, prompt_ids(n_prompt), layout, args.new, args.ab)
  elif args.ab:
    print("--ab: the kernel is off here, nothing to compare")


def paired_rounds(model, other, ids: list[int], layout: str, new: int, rounds: int):
  """Batch-1 decode step of ``model`` vs ``other`` = (name, LM), alternating in one process."""
  name, other_lm = other

  def step(m) -> float:
    gen = lambda n: m.generate([ids], max_new_tokens=n, eos_ids=[], return_tokens=True)
    t0 = time.perf_counter()
    gen(new)
    t1 = time.perf_counter()
    gen(1)
    return ((t1 - t0) - (time.perf_counter() - t1)) / (new - 1)

  step(model)
  step(other_lm)
  steps = {"model": [], "other": []}
  for r in range(rounds):  # alternate which goes first
    for side in (("model", "other") if r % 2 == 0 else ("other", "model")):
      steps[side].append(step(model if side == "model" else other_lm))
  diff = [o - m for m, o in zip(steps["model"], steps["other"])]
  print(f"A/B prompt {len(ids)} {layout}, {rounds} paired rounds: decode step median "
        f"{layout} {1e3 * statistics.median(steps['model']):.2f} ms, {name} "
        f"{1e3 * statistics.median(steps['other']):.2f} ms; {name} minus {layout} per round: "
        f"median {1e3 * statistics.median(diff):+.2f} ms, {layout} faster in "
        f"{sum(d > 0 for d in diff)} of {rounds}")


if __name__ == "__main__":
  main()
