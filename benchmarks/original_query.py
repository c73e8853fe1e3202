"""One batch-1 C2C query with the released PyTorch code: the figures ``c2c_query.py`` compares
c2cjax with (its ``ORIGINAL``), measured on this machine.

Run in the released code's venv from the repo root, on an idle machine (the HF folders are
written once by ``tests/fixtures/rosetta/export_hf.py`` in the main environment):

  /work/venv-rosetta/bin/python benchmarks/original_query.py --hf ~/.cache/c2cjax/hf \\
      --rosetta /work/rosetta-src [--reps 3] [--answer 64] [--prompt 124] [--json out.json]

and beside it ``python3 benchmarks/c2c_latency.py --shapes original`` for c2cjax.

``--pair paper --hf DIR --device cuda --dtype bfloat16`` (``benchmarks/device_release.sh``):
random Qwen3-0.6B <- Qwen2.5-0.5B-Instruct (``benchmarks/paper_hf.py``) on a GPU, queried with
the ids ``c2c_query.py --shapes paper`` uses (seeded random ids: those models have no real
tokenizer), laid out as the evaluator lays out a one-tokenizer pair's generate inputs (every
prompt slot but the last fused); timings synchronised with the device.

What runs, all the released code's own classes (``rosetta`` at /work/rosetta-src), fp32 on CPU,
``torch.inference_mode``, torch's default thread count (all cores; ``--threads`` only for a
smoke run on a busy machine: there, threads waiting on a busy core make each small decode op
wait, e.g. 1.8 s/token with 2 threads vs 0.1 with 1):
- Models: the offline pair, receiver SmolLM2-135M-Instruct, sharer Gemma-3-270M, as fp32 HF
  folders, with the evaluator's ``apply_generation_config`` (greedy) and tokenizers set up as
  ``load_rosetta_model`` / ``UnifiedEvaluator`` do.
- Fuser at ``c2c_query.py --shapes original``'s sizes: one seeded ``C2CProjector`` per receiver
  layer (30; hidden = intermediate = 1024, 3 layers; ``create_projector``), layer map
  ``last_aligned_sources(30, 18)``, gate logits +1 (open, as ``open_gates``), in a
  ``RosettaModel`` ("sequential" fusion, the loader's default), built by
  ``tests/fixtures/rosetta/make_generation_fixture.py``'s helpers (not saved / reloaded).
- Prompt: the same user text as ``c2c_query.py`` (``query_prompt.shortest``: the fewest words
  whose receiver chat prompt has >= ``--prompt`` tokens). C2C's inputs come from
  ``UnifiedEvaluator.prepare_model_inputs`` (generate path, token aligner, strategy "first"),
  whose receiver row is the aligner's padded row: it can be longer than the plain prompt,
  both counts are printed.
- Timed, best of ``--reps`` after one warm-up, batch 1, ``--answer`` new tokens, greedy, EOS
  ignored: C2C query = ``RosettaModel.generate`` (``eos_token_id=[]``); C2C prefill =
  ``RosettaModel.forward`` on the prompt, the call ``generate`` makes first (sharer forward,
  projectors, receiver sections: it returns the fused cache and the last logits); receiver
  query = transformers ``generate`` on the plain chat prompt (``min_new_tokens`` = answer);
  receiver prefill = its forward on that prompt. Decode ms/token = (query - prefill) /
  (answer - 1) as ``c2c_query.py`` defines it; note that ``RosettaModel.generate`` runs one
  decode forward after the last token too (``answer`` decode forwards, not answer - 1), so this
  slightly overstates its per-forward time (by answer / (answer - 1)).
- Fused slots differ between the two schemes: the evaluator (default, ``--fuse release``)
  fuses the user message's slots only (94 of the 124 slots of the default prompt: sections
  [24, 94, 6], the sharer runs on the first two, the projectors on the second), while
  ``c2c_query.py``'s fresh fuser uses c2cjax's "offsets" scheme, which fuses every prompt slot
  but the last (123). ``--fuse all-but-last`` gives the released ``RosettaModel`` that layout
  (two sections, [1, 0] x (P - 1) and [-1, 0]) on the same aligned ids: the same fusion work
  as c2cjax's, not the evaluator's own layout.

Prints one line per figure and the ``ORIGINAL`` dict to paste into ``c2c_query.py``; ``--json``
writes the figures with the machine, versions and the rosetta commit (never overwrites).
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
import timeit

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, os.pardir, "tests", "fixtures", "rosetta")]
import make_generation_fixture as fixture  # noqa: E402  (the fuser and import helpers)
from query_prompt import shortest  # noqa: E402

HIDDEN = 1024  # c2c_query.py --shapes original: hidden = intermediate = 1024, 3 layers


def best_time(fn, reps: int) -> float:
  fn()  # warm-up
  return min(timeit.repeat(fn, repeat=reps, number=1))


def load(args):
  """(RosettaModel, receiver tokenizer, sharer tokenizer, evaluator module, layer map)."""
  import transformers
  U, E = fixture.released_evaluator(args.rosetta)
  from rosetta.model.wrapper import RosettaModel

  generation = {"do_sample": False}
  models, toks = [], []
  for d in pair_dirs(args):
    m = transformers.AutoModelForCausalLM.from_pretrained(
        d, torch_dtype=getattr(torch, args.dtype)).eval()
    E.apply_generation_config(m, generation)
    tok = transformers.AutoTokenizer.from_pretrained(d)
    if tok.pad_token is None:
      tok.pad_token = tok.eos_token
    E.set_default_chat_template(tok, d)
    models.append(m)
    toks.append(tok)
  projectors, mapping = fixture.make_projectors(models[0].config, models[1].config, HIDDEN)
  projectors = [p.to(getattr(torch, args.dtype)) for p in projectors]  # as setup_models's dtype
  model = RosettaModel(models, base_model_idx=0, projector_list=projectors,
                       multi_source_fusion_mode="sequential").eval().to(args.device)
  fixture.set_layer_map(model, mapping)
  evaluator = U.UnifiedEvaluator.__new__(U.UnifiedEvaluator)
  evaluator.model_config = {"rosetta_config": {"alignment_strategy": fixture.STRATEGY}}
  evaluator.eval_config, evaluator.generation_config = {}, generation
  return model, toks, evaluator, mapping


def paper_inputs(prompt: int, vocab: int, device: str) -> dict:
  """``--pair paper``: the ids ``c2c_query.py --shapes paper`` queries (``prompt`` seeded
  random ids; its models have no tokenizer), in the evaluator's same-tokenizer generate layout
  (``prepare_model_inputs`` without an aligner: one ``input_ids`` for both models, positions
  from the mask, every slot but the last fused)."""
  import numpy as np
  ids = np.random.default_rng(0).integers(100, vocab, (1, prompt))
  ids = torch.tensor(ids, dtype=torch.long, device=device)
  mask = torch.ones_like(ids)
  return {"input_ids": ids, "attention_mask": mask, "position_ids": mask.cumsum(-1) - 1,
          "kv_cache_index": [torch.tensor([[[1, 0]] * (prompt - 1)], device=device),
                             torch.tensor([[[-1, 0]]], device=device)]}


def measure(model, tok, evaluator, sharer_tok, text, plain, n: int, reps: int,
            fuse: str = "release", device: str = "cpu", c2c_in=None) -> dict:
  """Seconds per query / prefill of C2C and the receiver alone (module doc), each call
  waiting for the device; ``c2c_in`` given (``--pair paper``) replaces the evaluator's
  inputs."""
  if c2c_in is None:
    c2c_in = evaluator.prepare_model_inputs(text, tok, torch.device(device), "rosetta",
                                            sharer_tok, "generate")["inputs"]
    if fuse == "all-but-last":  # c2cjax's "offsets" scheme's fused slots, in release format
      p = c2c_in["input_ids"][0].shape[1]
      c2c_in["kv_cache_index"] = [torch.tensor([[[1, 0]] * (p - 1)], device=device),
                                  torch.tensor([[[-1, 0]]], device=device)]
  receiver = model.model_list[0]
  plain = torch.tensor([plain], device=device)
  pad = tok.pad_token_id
  sync = lambda f: lambda: (f(), synchronize(device))

  def c2c_query():
    out = model.generate(**c2c_in, max_new_tokens=n, do_sample=False, eos_token_id=[],
                         pad_token_id=pad)
    ids = c2c_in["input_ids"]
    assert out.shape[1] == (ids if torch.is_tensor(ids) else ids[0]).shape[1] + n, out.shape

  def receiver_query():
    out = receiver.generate(input_ids=plain, attention_mask=torch.ones_like(plain),
                            max_new_tokens=n, min_new_tokens=n, do_sample=False,
                            pad_token_id=pad)
    assert out.shape[1] == plain.shape[1] + n, out.shape

  times = {
      "receiver prefill": best_time(sync(lambda: receiver(input_ids=plain, use_cache=True)),
                                    reps),
      "c2c prefill": best_time(sync(lambda: model.forward(**c2c_in, use_cache=True)), reps),
      "receiver query": best_time(sync(receiver_query), reps),
      "c2c query": best_time(sync(c2c_query), reps),
  }
  for k in ("receiver", "c2c"):
    times[f"{k} decode ms/token"] = (1e3 * (times[f"{k} query"] - times[f"{k} prefill"])
                                     / max(n - 1, 1))
  sections = [int(s.shape[1]) for s in c2c_in["kv_cache_index"]]
  fused = [int(s[0, 0, 0]) > 0 for s in c2c_in["kv_cache_index"]]
  ids, masks = c2c_in["input_ids"], c2c_in["attention_mask"]
  if torch.is_tensor(ids):  # one tokenizer: both models read the same row
    ids, masks = [ids, ids], [masks, masks]
  counts = {"receiver plain": plain.shape[1], "c2c receiver": int(ids[0].shape[1]),
            "c2c receiver unpadded": int(masks[0].sum()),
            "c2c sharer": int(ids[1].shape[1]),
            "c2c sharer unpadded": int(masks[1].sum()),
            "sections": sections, "fused sections": fused}
  return times, counts


def machine() -> dict:
  """The host (and the first GPU's name where torch sees one)."""
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(l.split(":", 1)[1].strip() for l in f if l.startswith("model name"))
  except (OSError, StopIteration):
    pass
  gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
  return {"machine": platform.machine(), "cpu": cpu, "cores": os.cpu_count(),
          "torch_threads": torch.get_num_threads(), "load_average": os.getloadavg(),
          "python": platform.python_version(), "gpu": gpu}


def rosetta_commit(path):
  try:
    return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


PAIR_DIRS = ("SmolLM2-135M-Instruct", "gemma-3-270m")  # receiver, sharer (export_hf.py)
PAPER_DIRS = ("qwen3-0.6b", "qwen2.5-0.5b-instruct")  # receiver, sharer (paper_hf.py)


def pair_dirs(args) -> tuple[str, str]:
  """The receiver's and the sharer's HF folders under ``--hf`` for ``--pair``."""
  names = PAPER_DIRS if args.pair == "paper" else PAIR_DIRS
  return tuple(os.path.join(args.hf, n) for n in names)


def synchronize(device: str) -> None:
  """Waits for the device's queued work (GPU timings; nothing on the CPU)."""
  if device == "cuda":
    torch.cuda.synchronize()


def add_release_args(ap: argparse.ArgumentParser) -> None:
  """``--hf``, ``--rosetta`` and ``--threads``: what every released-code benchmark takes."""
  ap.add_argument("--hf", default=os.path.expanduser("~/.cache/c2cjax/hf"),
                  help="HF folders of --pair: the offline pair's (export_hf.py) or the paper "
                       "pair's (paper_hf.py)")
  ap.add_argument("--pair", choices=["offline", "paper"], default="offline",
                  help="offline: SmolLM2-135M <- Gemma-3-270M (real weights); paper: random "
                       "Qwen3-0.6B <- Qwen2.5-0.5B-Instruct at their published configs")
  ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
  ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                  help="models and projectors (the release trains in bfloat16 on GPUs)")
  ap.add_argument("--rosetta", default="/work/rosetta-src", help="the released code's checkout")
  ap.add_argument("--threads", type=int, default=None,
                  help="torch threads (default: torch's, all cores; fewer only on a busy machine)")


def check_release_args(ap: argparse.ArgumentParser, args) -> None:
  """Refuses an existing ``--json`` and a ``--hf`` without the pair, before anything loads;
  sets ``--threads``."""
  if args.json and os.path.exists(args.json):
    ap.error(f"--json {args.json} exists; not overwriting it")
  maker = ("benchmarks/paper_hf.py DIR" if args.pair == "paper" else
           "tests/fixtures/rosetta/export_hf.py")
  for d in pair_dirs(args):
    if not os.path.isdir(d):
      ap.error(f"no {os.path.basename(d)} in --hf {args.hf} (--pair {args.pair}): run "
               f"python3 {maker}")
  if args.device == "cuda" and not torch.cuda.is_available():
    ap.error("--device cuda: torch sees no CUDA device")
  if args.threads is not None:
    torch.set_num_threads(args.threads)


def main():
  ap = argparse.ArgumentParser(description="One batch-1 C2C query with the released PyTorch "
                               "code, timed (see the module doc).")
  add_release_args(ap)
  ap.add_argument("--reps", type=int, default=3, help="timed calls per figure (best)")
  ap.add_argument("--answer", type=int, default=64, help="new tokens per query")
  ap.add_argument("--prompt", type=int, default=124, help="receiver chat prompt tokens (at least)")
  ap.add_argument("--json", default=None, help="write the figures here (must not exist)")
  ap.add_argument("--fuse", choices=["release", "all-but-last"], default="release",
                  help="fused slots: the evaluator's sections (default) or every slot but the "
                       "last, as c2cjax's offsets scheme (module doc)")
  args = ap.parse_args()
  check_release_args(ap, args)
  if args.reps < 1 or args.answer < 1:
    ap.error("--reps and --answer must be >= 1")

  import transformers
  start = time.perf_counter()
  with torch.inference_mode():
    model, (tok, sharer_tok), evaluator, mapping = load(args)
    c2c_in = None
    if args.pair == "paper":  # random ids (paper_inputs), as c2cjax's paper-shape query
      c2c_in = paper_inputs(args.prompt, model.model_list[0].config.vocab_size, args.device)
      text, plain = f"<{args.prompt} random ids>", c2c_in["input_ids"][0].tolist()
    else:
      chat = lambda t: tok.apply_chat_template([{"role": "user", "content": t}],
                                               tokenize=True, add_generation_prompt=True,
                                               enable_thinking=False)
      text, plain = shortest(args.prompt, chat, len)
    times, counts = measure(model, tok, evaluator, sharer_tok, text, list(plain), args.answer,
                            args.reps, args.fuse, args.device, c2c_in)
  n = args.answer
  params = sum(p.numel() for p in model.projector_list.parameters())
  commit = rosetta_commit(args.rosetta)
  info = machine()

  print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load "
        f"average {' '.join(f'{x:.2f}' for x in info['load_average'])}")
  device = f"cuda ({info['gpu']})" if args.device == "cuda" else "cpu"
  print(f"machine: {info['machine']}, {info['cpu']}, {info['cores']} cores; device {device}; torch "
        f"{torch.__version__} ({info['torch_threads']} threads), transformers "
        f"{transformers.__version__}, rosetta {commit or 'unknown commit'}")
  receiver_dir, sharer_dir = (os.path.basename(d) for d in pair_dirs(args))
  print(f"original code: receiver {receiver_dir}, sharer {sharer_dir}, {args.dtype}; "
        f"C2CProjector hidden {HIDDEN} x 3 layers, {len(model.projector_list)} projectors, "
        f"{sum(len(v) for v in mapping.values())} pairs, gates open, {params / 1e6:.0f}M params")
  words = "random ids" if args.pair == "paper" else f"{len(text.split())} words"
  layout = ("the evaluator's one-tokenizer layout, all but the last slot fused"
            if args.pair == "paper" else f"--fuse {args.fuse}")
  print(f"batch 1, prompt {words}: receiver alone {counts['receiver plain']} "
        f"tokens; C2C receiver {counts['c2c receiver']} slots ({counts['c2c receiver unpadded']} "
        f"unpadded), sharer {counts['c2c sharer']} slots ({counts['c2c sharer unpadded']} "
        f"unpadded), sections {counts['sections']} fused {counts['fused sections']} "
        f"({layout})")
  print(f"answer {n} tokens, greedy, EOS ignored; best of {args.reps} after a warm-up\n")
  print("| system | query s | prefill s | decode ms/token |")
  print("|---|---:|---:|---:|")
  for k, name in (("receiver", "receiver (transformers generate)"),
                  ("c2c", "c2c (RosettaModel.generate)")):
    print(f"| {name} | {times[f'{k} query']:.3f} | {times[f'{k} prefill']:.3f} | "
          f"{times[f'{k} decode ms/token']:.1f} |")
  digits = 3 if args.device == "cuda" else 2
  original = {"query_s": round(times["c2c query"], digits),
              "prefill_s": round(times["c2c prefill"], digits),
              "decode_ms": round(times["c2c decode ms/token"], 1),
              "receiver_hf_s": round(times["receiver query"], digits)}
  print(f"\nORIGINAL = {original}")
  print(f"(whole run {time.perf_counter() - start:.0f} s)")
  if args.json:
    record = {"command": " ".join([sys.executable] + sys.argv), "times_s": times,
              "original": original, "tokens": counts, "prompt_text": text, "answer": n,
              "reps": args.reps, "fuse": args.fuse, "hidden_dim": HIDDEN, "pair": args.pair,
              "device": args.device, "dtype": args.dtype,
              "projectors": len(model.projector_list),
              "projector_params": params, "layer_map": mapping, "torch": torch.__version__,
              "transformers": transformers.__version__, "rosetta_commit": commit, **info,
              "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"}
    with open(args.json, "x") as f:
      json.dump(record, f, indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
  main()
