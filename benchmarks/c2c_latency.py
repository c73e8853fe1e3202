"""Per-query latency of receiver alone vs C2C vs text-to-text (T2T), batch 1.

    python benchmarks/c2c_latency.py [--fuser runs/local/fuser] [--questions 20]
        [--answer 32 64 128] [--background 64]
    python benchmarks/c2c_latency.py --shapes paper|original [--prompt 124] [--answer 64]
        [--original RELEASED.json]    # original: the released code's figures of this window

``--shapes paper``: random Qwen3-0.6B <- Qwen2.5-0.5B-Instruct at their published configs
(``c2cjax.models.paper``), fuser hidden 1024 x 3 layers on all 28 receiver layers, gates
forced open; ``--shapes original``: the offline pair below with the fuser the original
code was measured with (30 projectors, hidden 1024, gates open) on a ``--prompt``-token
chat prompt. Both time one batch-1 query (prefill, decode per token, total) for the
receiver alone, C2C and T2T, with the bandwidth floor of batch-1 decode, and print the
original code's figures on this machine kind beside C2C's.

Offline pair: receiver SmolLM2-135M-Instruct, sharer Gemma-3-270M (PyPI GGUFs, fp32).
Same ARC-Challenge questions and budgets for every system, greedy with EOS ignored so every
run generates exactly the same number of tokens:
  receiver  MCQ chat prompt -> N new tokens.
  c2c       the same prompt, fused prefill (receiver + sharer + fuser), N tokens.
  t2t       the sharer writes ``--background`` tokens of background, then the receiver
            answers the MCQ prompt with it (N tokens).
for every answer budget N of ``--answer`` (C2C's extra cost is a fixed prefill cost, so
its ratio to the receiver depends on how many tokens the answer has).
A query's time is its wall time end to end on the host: tokenisation (and token alignment
for C2C), prefill, decode and detokenisation. Prompts are left-padded to multiples of 32
tokens so shapes repeat; a warm-up pass over every query first compiles every shape, so the
timed pass excludes compilation. Systems run interleaved per query. The prefill alone
(receiver vs fused C2C prefill, logits of the last prompt token) is timed too, to show
where C2C's extra time goes.
Without ``--fuser``, a freshly initialised fuser of the paper's sizes (hidden 1024,
intermediate 1024, 3 layers) with every gate forced open is used, so the fusion cost is
really paid (its answers mean nothing; only the time is measured).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import time

import jax
import numpy as np

from c2cjax.config_check import count_arg


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--fuser", default=None, help="fuser checkpoint (default: fresh, gates open)")
  ap.add_argument("--questions", type=count_arg(1), default=20)
  ap.add_argument("--answer", type=count_arg(1), nargs="+", default=[32, 64, 128],
                  help="answer token budgets per query")
  ap.add_argument("--background", type=count_arg(1), default=64, help="T2T background tokens")
  ap.add_argument("--shapes", choices=["arc", "paper", "original"], default="arc")
  ap.add_argument("--prompt", type=count_arg(1), default=124, help="prompt tokens (paper/original)")
  ap.add_argument("--reps", type=count_arg(1), default=3,
                  help="timed queries (paper/original; best)")
  ap.add_argument("--layout", choices=["scanned", "unscanned"], default="scanned",
                  help="receiver params stacked under nn.scan or one block per layer "
                       "(paper/original)")
  ap.add_argument("--original", type=pathlib.Path, default=None,
                  help="--shapes original: the released code's figures from this JSON "
                       "(benchmarks/original_query.py --json, run beside this one) instead of "
                       "the stored ones (benchmarks/c2c_query.py's ORIGINAL)")
  args = ap.parse_args()
  if args.original is not None:
    if args.shapes != "original":
      ap.error("--original goes with --shapes original")
    if not args.original.is_file():
      ap.error(f"--original {args.original}: no such file")
  if args.shapes != "arc":
    from c2c_query import one_query  # pylint: disable=import-outside-toplevel
    one_query(args)
    return

  from c2cjax import load_model, offline
  from c2cjax.c2c import C2C, Fuser
  from c2cjax.evaluation import (background_prompt, load_arc_challenge, mcq_prompt,
                                 t2t_receiver_prompt)
  from c2cjax.evaluation.answerers import Fused, Solo, bucket, pad_left
  from c2cjax.evaluation.systems import load_fusers, open_gates

  receiver = load_model(offline.smollm2_gguf())
  sharer = load_model(offline.gemma3_gguf())
  if args.fuser:
    fuser = load_fusers(args.fuser)[0]  # closed-gate pairs pruned: identity at inference
    fuser_note = f"checkpoint {args.fuser}, closed-gate pairs pruned"
  else:
    fuser = open_gates(Fuser.init(receiver, sharer, jax.random.PRNGKey(0)))
    fuser_note = "fresh init, gates forced open"
  fc = fuser.config
  fuser_note += (f" (hidden {fc.hidden_dim}, intermediate {fc.intermediate_dim}, "
                 f"{fc.num_layers} layers, {len(fuser.layer_map)} layer pairs, "
                 f"{sum(x.size for x in jax.tree.leaves(fuser.params)) / 1e6:.1f}M params)")
  solo, writer = Solo(receiver), Solo(sharer)
  fused = Fused(C2C(receiver, [sharer], [fuser]))
  rtok, stok = receiver.tokenizer, sharer.tokenizer
  questions = load_arc_challenge(limit=args.questions, seed=0)
  buckets = tuple(range(32, 4097, 32))

  def answer(model, text, n):
    ids = model.encode(text, special=False)
    batch = pad_left([ids], bucket(len(ids[0]), buckets), 1)
    out, lengths = model.generate(*batch, max_new_tokens=n, eos_ids=())
    model.decode(np.asarray(out), np.asarray(lengths))
    return len(ids[0])

  def t2t(q, n):
    ids = writer.encode(background_prompt(q, stok), special=not stok.chat_template)
    batch = pad_left([ids], bucket(len(ids[0]), buckets), 1)
    out, lengths = writer.generate(*batch, max_new_tokens=args.background, eos_ids=())
    background = writer.decode(np.asarray(out), np.asarray(lengths))[0]
    return answer(solo, t2t_receiver_prompt(q, background, rtok), n)

  def prefill(model, q):
    ids = model.encode(mcq_prompt(q, rtok), special=False)
    batch = pad_left([ids], bucket(len(ids[0]), buckets), 1)
    np.asarray(model.prefill(*batch, max_len=batch[0].shape[1])[0])

  systems = {"receiver prefill": lambda q: prefill(solo, q),
             "c2c prefill": lambda q: prefill(fused, q)}
  for n in args.answer:
    systems[f"receiver @{n}"] = lambda q, n=n: answer(solo, mcq_prompt(q, rtok), n)
    systems[f"c2c @{n}"] = lambda q, n=n: answer(fused, mcq_prompt(q, rtok), n)
    systems[f"t2t @{n}"] = lambda q, n=n: t2t(q, n)
  start = time.perf_counter()
  prompt_lens = [len(solo.encode(mcq_prompt(q, rtok), special=False)[0]) for q in questions]
  for q in questions:  # warm-up pass: compiles every shape
    for fn in systems.values():
      fn(q)
  warmup_s = time.perf_counter() - start
  times = {name: [] for name in systems}
  for q in questions:
    for name, fn in systems.items():
      t = time.perf_counter()
      fn(q)
      times[name].append(1e3 * (time.perf_counter() - t))

  ms = {k: np.array(v) for k, v in times.items()}
  print(f"date: {datetime.date.today().isoformat()}")
  print(f"machine: {platform.machine()} {platform.processor() or ''}".rstrip() +
        f", {os.cpu_count()} cores, jax {jax.__version__} on {jax.devices()[0].platform}")
  print("receiver SmolLM2-135M-Instruct, sharer Gemma-3-270M (GGUF dequantised to fp32)")
  print(f"fuser: {fuser_note}")
  print(f"{len(questions)} ARC-Challenge questions (seed 0), batch 1, prompt "
        f"{np.mean(prompt_lens):.0f} tokens mean (padded to multiples of 32); answer "
        f"{'/'.join(map(str, args.answer))} tokens, T2T background {args.background} tokens; "
        "greedy, EOS ignored")
  print(f"warm-up pass (compilation, excluded): {warmup_s:.0f} s\n")
  print(f"| {'system':<16} | {'mean ms':>8} | {'p50 ms':>8} |")
  print(f"|{'-' * 18}|---------:|---------:|")
  for name, v in ms.items():
    print(f"| {name:<16} | {v.mean():>8.1f} | {np.median(v):>8.1f} |")
  print()
  for n in args.answer:
    for a, b, goal in (("c2c", "receiver", "<= 1.15"), ("t2t", "c2c", ">= 2")):
      x, y = ms[f"{a} @{n}"], ms[f"{b} @{n}"]
      print(f"answer {n:>4} tokens: {a.upper()}/{b}: {x.mean() / y.mean():.2f} (mean), "
            f"{np.median(x) / np.median(y):.2f} (p50); goal {goal}")


if __name__ == "__main__":
  main()
