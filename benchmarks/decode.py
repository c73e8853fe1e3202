"""Decode throughput of ``LM.generate`` vs transformers' ``generate`` on the same model.

    python benchmarks/decode.py [--model smollm2|gemma3|PATH] [--new 64] [--batches 1 8]

Both run fp32 greedy on the same prompt with the same token budget (EOS ignored), in one
process, after a warm-up call each. Also prints the memory-bandwidth floor for batch-1
decode: bytes of weights read per token / this machine's measured bandwidth.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax


def measure_bandwidth(mb: int = 1024, reps: int = 5) -> float:
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
  ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
  ap.add_argument("--reps", type=int, default=3)
  args = ap.parse_args()

  import torch
  import transformers as tf

  from c2cjax import load_model, offline

  path = {"smollm2": offline.smollm2_gguf, "gemma3": offline.gemma3_gguf}.get(
      args.model, lambda: args.model)()
  lm = load_model(path)
  hf = tf.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                               dtype=torch.float32).eval()
  tok = lm.tokenizer
  prompt = "Write a short story about a robot who learns to paint."
  if tok.chat_template:
    prompt = tok.apply_chat_template([{"role": "user", "content": prompt}],
                                     add_generation_prompt=True, tokenize=False)
  ids = tok(prompt, add_special_tokens=not tok.chat_template)["input_ids"]

  n_params = sum(x.size for x in jax.tree.leaves(lm.params))
  weight_bytes = n_params * 4
  bw = measure_bandwidth()
  floor = bw / weight_bytes
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__}")
  print(f"model: {path.name}, {n_params / 1e6:.1f}M params, fp32 weights {weight_bytes / 2**20:.0f} "
        f"MiB; measured read bandwidth {bw / 1e9:.1f} GB/s -> batch-1 floor {floor:.1f} tok/s")
  print(f"prompt {len(ids)} tokens, {args.new} new tokens, greedy, EOS ignored")
  print(f"{'batch':>5} {'c2cjax tok/s':>13} {'HF tok/s':>9} {'ratio':>6} {'% of floor':>10}")
  torch.set_num_threads(os.cpu_count())
  for b in args.batches:
    prompts = [ids] * b
    ours = _time(lambda: lm.generate(prompts, max_new_tokens=args.new, eos_ids=[],
                                     return_tokens=True), args.reps)
    x = torch.tensor(prompts)

    def hf_gen():
      with torch.no_grad():
        hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=args.new,
                    min_new_tokens=args.new, do_sample=False, pad_token_id=0)

    theirs = _time(hf_gen, args.reps)
    ours_tps, hf_tps = b * args.new / ours, b * args.new / theirs
    print(f"{b:>5} {ours_tps:>13.1f} {hf_tps:>9.1f} {ours_tps / hf_tps:>6.2f} "
          f"{100 * ours_tps / b / floor:>9.0f}%")


if __name__ == "__main__":
  main()
