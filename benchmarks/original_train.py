"""The released PyTorch code's fuser training step, timed on this machine: the "original"
figures ``train_step.py --shapes original`` compares c2cjax with (its ``ORIGINAL``).

Run in the released code's venv from the repo root, on an idle machine (the HF folders are
written once by ``tests/fixtures/rosetta/export_hf.py`` in the main environment):

  /work/venv-rosetta/bin/python benchmarks/original_train.py --hf ~/.cache/c2cjax/hf \\
      --rosetta /work/rosetta-src [--batch 4 --seq 256 --steps 3 --warmup 1] [--json out.json]

On a GPU, at the paper's shapes, as ``benchmarks/device_release.sh`` runs it (random
Qwen3-0.6B <- Qwen2.5-0.5B-Instruct written by ``benchmarks/paper_hf.py``; bfloat16 models,
projectors and AdamW state, as ``SFT_train.main`` trains on GPUs; step times synchronised
with the device, peak memory from ``torch.cuda.max_memory_allocated`` over the timed steps):

  python3 benchmarks/original_train.py --pair paper --hf DIR --device cuda --dtype bfloat16

and beside it ``python3 benchmarks/train_step.py --shapes original --frameworks jax`` for
c2cjax (that one runs its child under ``GLIBC_TUNABLES`` with transparent huge pages unless
``--no-hugepages``; this script runs under whatever ``GLIBC_TUNABLES`` it is started with and
prints it, so set the same value for a like-for-like peak RSS). Smoke run on a busy machine:
``--batch 1 --seq 16 --hidden 16 --steps 1 --warmup 0 --threads 1``.

What runs, all the released code's own functions (``rosetta`` at /work/rosetta-src, and its
training script ``script/train/SFT_train.py`` imported as a module), fp32 on CPU, torch's
default thread count unless ``--threads``:
- Config: the released C2C training recipe (``--recipe``, default
  ``recipe/train_recipe/C2C_0.6+0.5.json``) with its model paths replaced by the offline pair
  (receiver SmolLM2-135M-Instruct = ``base_model``, sharer Gemma-3-270M = ``teacher_model``)
  and ``hidden_dim`` = ``intermediate_dim`` = ``--hidden`` (1024 is the recipe's own); the
  rest is the recipe's: ``C2CProjector``, 3 layers, dropout 0.1, gate temperature 1.0 ->
  0.001 over 1929 steps, ``last_aligned`` map (K = 1), ``freeze`` ["teacher", "base"],
  AdamW lr 1e-4, weight decay 0.01, ``max_grad_norm`` 1.0, seed 42,
  ``is_do_alignment`` false (no sharer tokenizer or aligner is loaded: the sharer's ids come
  ready-made, see Batch).
- Model: ``SFT_train.set_seed`` and ``enable_full_determinism`` as its ``main`` calls them,
  then ``SFT_train.setup_models(model_config, "rosetta", "cpu", torch.float32)`` (``main``
  passes bfloat16; fp32 here): both models, one projector per receiver layer (30),
  ``RosettaModel`` ("sequential" fusion), ``last_aligned_sources(30, 18)`` set with
  ``set_projector_config``. Then ``main``'s freezing (``freeze_model`` on both models,
  ``unfreeze_projectors``) and its AdamW with three parameter groups ("gate" in the name /
  "key_weight" or "value_weight" / the rest, one lr, the recipe's weight decay).
- Batch: ``train_step.py``'s ``synthetic_batch`` (same ``--seed`` => the same ids c2cjax
  trains on): B rows x T tokens, receiver ids in the receiver's vocabulary and sharer ids in
  the sharer's, each row given to the release's ``RosettaDataCollator`` as an
  ``AlignedChatDataset`` sample is (``input_ids`` = [receiver ids, sharer ids]), with the
  layout ``ChatDataset`` / ``AlignedChatDataset`` build for an instruction of T/2 tokens
  followed by a response: ``kv_cache_index = generate_kv_cache_index(T/2, T)`` (the release's
  function: sharer 1 on the first T/2 - 1 tokens, -1 on the last T/2 + 1; the release never
  fuses the instruction's last token, so this is one fused slot fewer than c2cjax's T/2) and
  labels -100 on the first T/2 tokens, the ids on the last T/2 (the same T/2 target tokens
  as c2cjax's ``loss_mask``). No padding (all rows are T long).
- Step, as ``SFT_train.main``'s loop runs it with ``gradient_accumulation_steps`` 1 (the
  recipe accumulates 8 such micro-batches per update; ``train_step.py``'s default ``--accum``
  is 1 too): ``model.train()`` once, then per step ``SFT_train.train_step`` (which calls
  ``RosettaModel.forward(kv_cache_index=..., input_ids=..., attention_mask=...,
  position_ids=..., labels=..., use_cache=True)``: receiver and, under no_grad, sharer over
  the fused section, projectors into the receiver's cache, receiver over the last section with
  its loss), ``loss.item()``, ``loss.backward()``, ``clip_grad_norm_`` over the trainable
  params, ``optimizer.step()``, ``optimizer.zero_grad()``, ``update_temperature(step)`` on
  every projector. Not run: the LR scheduler (``get_scheduler`` "linear"; it only changes
  the lr value, a few Python operations per step; the lr here stays the recipe's 1e-4),
  wandb logging, evaluation and checkpoints.
- Autograd anomaly detection: ``SFT_train`` turns it on at import
  (``torch.autograd.set_detect_anomaly(True)``), so the release trains with it; kept on by
  default (``--anomaly release``), ``--anomaly off`` turns it off after the import to time
  the step without it. ``enable_full_determinism`` (deterministic algorithms) stays on.
- Timed: ``--warmup`` untimed steps, then ``--steps`` timed steps (median reported); peak
  RSS over the timed steps by ``train_step.py``'s ``PeakRSS`` (``/proc/self/clear_refs`` +
  VmHWM) after ``release_free_heap``, as ``train_step.py`` measures c2cjax. One more,
  untimed, step afterwards checks where the gradients went (every projector parameter got
  a nonzero gradient, no model parameter any).

Patches (this process only; the released code is never edited): ``SFT_train`` and
``rosetta.train.dataset_adapters`` import ``wandb`` and ``datasets``, not installed and not
used on this path: stub modules (``make_generation_fixture.stub``); ``peft`` is optional there.

Prints per-step times and losses, the median, RSS after load and the timed peak, and a last
line ``RATIO released train step: ...``; ``--json`` writes the figures with the machine,
versions and the rosetta commit (never overwrites; checked before any model loads).
"""

import argparse
import datetime
import json
import math
import os
import statistics
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, os.pardir, "tests", "fixtures", "rosetta")]
import make_generation_fixture as fixture  # noqa: E402  (stub)
import train_step as bench  # noqa: E402  (PeakRSS, release_free_heap, synthetic_batch; no jax)
from original_query import (add_release_args, check_release_args, machine,  # noqa: E402
                            pair_dirs, rosetta_commit, synchronize)

RECIPE = os.path.join("recipe", "train_recipe", "C2C_0.6+0.5.json")


def released_trainer(rosetta_src):
  """The released ``SFT_train`` script and ``rosetta.train.dataset_adapters``, imported with
  stubs for their unused imports (module doc). Importing ``SFT_train`` turns autograd
  anomaly detection on, as the release's training runs do."""
  fixture.stub("datasets", load_dataset=None, load_from_disk=None)
  fixture.stub("wandb")
  fixture.stub("peft")  # optional there (LoRA baselines); a GPU image's own peft may not
  # import under the release's transformers, and an empty module reads as "not installed"
  sys.path.insert(0, os.path.join(rosetta_src, "script", "train"))
  import SFT_train as S  # the released training script
  from rosetta.train import dataset_adapters as D
  return S, D


def configs(args):
  """(recipe path, model_config, training_config): the recipe with the offline pair and
  ``--hidden`` (module doc)."""
  path = os.path.join(args.rosetta, args.recipe)
  with open(path) as f:
    recipe = json.load(f)
  model_config = dict(recipe["model"])
  receiver, sharer = pair_dirs(args)
  model_config.update(base_model=receiver, teacher_model=sharer, is_do_alignment=False)
  projector = dict(model_config["projector"])
  projector["params"] = {**projector["params"], "hidden_dim": args.hidden,
                         "intermediate_dim": args.hidden}
  model_config["projector"] = projector
  training = dict(recipe["training"])
  if not {"base", "teacher"} <= set(training["freeze"]) or "projector" in training["freeze"]:
    raise SystemExit(f"{path}: freeze {training['freeze']} is not a fuser-only training")
  return path, model_config, training


def load(S, model_config, training, device="cpu", dtype="float32"):
  """(RosettaModel, receiver tokenizer, AdamW, trainable params): ``SFT_train.main``'s setup
  for the rosetta mode (module doc)."""
  S.set_seed(seed=training["seed"])
  S.enable_full_determinism()
  model, tok, _, _ = S.setup_models(model_config, "rosetta", device, getattr(torch, dtype))
  model = model.to(device)
  freeze = training["freeze"]
  for idx, name in ((0, "base"), (1, "teacher")):
    (S.freeze_model if name in freeze else S.unfreeze_model)(model.model_list[idx])
  S.unfreeze_projectors(model)
  groups = {"gate": [], "weight": [], "other": []}  # SFT_train.main's three groups
  for name, p in model.named_parameters():
    if p.requires_grad:
      key = ("gate" if "gate" in name else
             "weight" if "key_weight" in name or "value_weight" in name else "other")
      groups[key].append(p)
  lr = training["learning_rate"]
  optimizer = torch.optim.AdamW([{"params": groups[k], "lr": lr} for k in groups],
                                weight_decay=training["weight_decay"])
  trainable = [p for p in model.parameters() if p.requires_grad]
  return model, tok, optimizer, trainable


def make_batch(D, tok, training, batch: int, seq: int, seed: int, vocab):
  """The collated batch (module doc) and its features' layout."""
  spec = {"accum": 1, "batch": batch, "seq": seq, "seed": seed}
  ids = bench.synthetic_batch(spec, *vocab)
  half = seq // 2
  features = []
  for r, s in zip(ids["receiver_ids"][0].tolist(), ids["sharer_ids"][0].tolist()):
    features.append({"input_ids": [r, s], "labels": [-100] * half + r[half:],
                     "kv_cache_index": D.generate_kv_cache_index(half, seq)})
  collator = D.RosettaDataCollator(slm_tokenizer=tok, llm_tokenizer=None,
                                   max_length=training.get("max_length", 2048), aligner=None,
                                   do_alignment=False)
  out = collator(features)
  layout = {"sections": [int(k.shape[1]) for k in out["kv_cache_index"]],
            "section_sharer": [int(k[0, 0, 0]) for k in out["kv_cache_index"]],
            "fused_slots_per_row": int(out["kv_cache_index"][0].shape[1]),
            "target_tokens": int((out["labels"][:, 1:] != -100).sum())}
  return out, layout


def grad_check(model) -> dict:
  """Where the last backward's gradients went (before ``zero_grad``)."""
  proj = list(model.projector_list.parameters())
  models = list(model.model_list.parameters())
  return {"projector_tensors": len(proj),
          "projector_nonzero_grad": sum(p.grad is not None and bool(p.grad.any()) for p in proj),
          "model_tensors": len(models),
          "model_requires_grad": sum(p.requires_grad for p in models),
          "model_with_grad": sum(p.grad is not None for p in models)}


def main():
  ap = argparse.ArgumentParser(description="The released PyTorch code's fuser training step, "
                               "timed (see the module doc).")
  add_release_args(ap)
  ap.add_argument("--recipe", default=RECIPE, help="training recipe, relative to --rosetta")
  ap.add_argument("--batch", type=int, default=4, help="B: rows per step")
  ap.add_argument("--seq", type=int, default=256, help="T: tokens per row (even, >= 4)")
  ap.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
  ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
  ap.add_argument("--hidden", type=int, default=1024,
                  help="projector hidden = intermediate width (the recipe's is 1024; small "
                       "only for a smoke run)")
  ap.add_argument("--seed", type=int, default=0, help="synthetic ids (train_step.py's --seed)")
  ap.add_argument("--anomaly", choices=["release", "off"], default="release",
                  help="autograd anomaly detection: on as SFT_train sets it (default) or off")
  ap.add_argument("--json", default=None, help="write the figures here (must not exist)")
  args = ap.parse_args()
  check_release_args(ap, args)
  if args.seq < 4 or args.seq % 2:
    ap.error("--seq must be even and >= 4")
  if args.batch < 1 or args.steps < 1 or args.warmup < 0 or args.hidden < 1:
    ap.error("--batch, --steps and --hidden must be >= 1, --warmup >= 0")

  import transformers
  mem = bench.PeakRSS()
  start = time.perf_counter()
  S, D = released_trainer(args.rosetta)
  if args.anomaly == "off":
    torch.autograd.set_detect_anomaly(False)
  recipe, model_config, training = configs(args)
  model, tok, optimizer, trainable = load(S, model_config, training, args.device, args.dtype)
  receiver, sharer = model.model_list
  vocab = (receiver.config.vocab_size, sharer.config.vocab_size)
  batch, layout = make_batch(D, tok, training, args.batch, args.seq, args.seed, vocab)
  load_s = time.perf_counter() - start
  rss_load = mem.rss_mib()  # safetensors weights are mmapped: resident once a step reads them
  n_trainable = sum(p.numel() for p in trainable)
  n_projector = sum(p.numel() for p in model.projector_list.parameters())
  n_total = sum(p.numel() for p in model.parameters())
  pairs = {int(t): [int(s) for s, _ in v]
           for t, v in model.projector_dict[0][1].items()}
  max_length = training.get("max_length", 2048)
  state = {"step": 0}

  def run_step(check=False):
    loss = S.train_step(model, batch, tok, max_length, args.device, "rosetta")
    value = loss.detach().item()
    loss.backward()  # gradient_accumulation_steps 1: loss / 1
    checked = grad_check(model) if check else None
    norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm=training["max_grad_norm"])
    optimizer.step()
    optimizer.zero_grad()
    state["step"] += 1
    for proj in model.projector_list:
      if callable(getattr(proj, "update_temperature", None)):
        proj.update_temperature(state["step"])
    synchronize(args.device)  # a GPU step is done when its queued work is
    return value, float(norm), checked

  model.train()
  warm_losses = []
  t0 = time.perf_counter()
  for _ in range(args.warmup):
    warm_losses.append(run_step()[0])
  warmup_s = (time.perf_counter() - t0) / max(args.warmup, 1)
  bench.release_free_heap()
  rss_loaded = mem.rss_mib()  # before the timed steps
  mem.reset()
  cuda = args.device == "cuda"
  if cuda:
    torch.cuda.reset_peak_memory_stats()
  times, losses, norms = [], [], []
  for _ in range(args.steps):
    t = time.perf_counter()
    value, norm, _ = run_step()
    times.append(time.perf_counter() - t)
    losses.append(value)
    norms.append(norm)
  peak = mem.peak_mib()
  gpu_peak = ({"allocated_gib": torch.cuda.max_memory_allocated() / 2**30,
               "reserved_gib": torch.cuda.max_memory_reserved() / 2**30} if cuda else None)
  check_loss, _, grads = run_step(check=True)  # untimed: where the gradients went
  median = statistics.median(times)
  commit = rosetta_commit(args.rosetta)
  info = machine()
  anomaly = torch.is_anomaly_enabled()
  tunables = os.environ.get("GLIBC_TUNABLES")
  params = model_config["projector"]["params"]

  print(f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; load "
        f"average {' '.join(f'{x:.2f}' for x in info['load_average'])}")
  device = f"cuda ({info['gpu']})" if cuda else "cpu"
  print(f"machine: {info['machine']}, {info['cpu']}, {info['cores']} cores; device {device}; "
        f"torch {torch.__version__} ({info['torch_threads']} threads), transformers "
        f"{transformers.__version__}, rosetta {commit or 'unknown commit'}; "
        f"GLIBC_TUNABLES={tunables}")
  receiver_dir, sharer_dir = (os.path.basename(d) for d in pair_dirs(args))
  print(f"original code: SFT_train.setup_models + train_step, recipe {args.recipe}; receiver "
        f"{receiver_dir}, sharer {sharer_dir}, {args.dtype} (models, projectors and AdamW "
        f"state); {model_config['projector']['type']} hidden "
        f"{params['hidden_dim']} x {params['num_layers']} layers, dropout {params['dropout']}, "
        f"{len(model.projector_list)} projectors, {sum(map(len, pairs.values()))} pairs "
        f"({model_config['mapping']}); anomaly detection {'on' if anomaly else 'off'} "
        f"(--anomaly {args.anomaly}), deterministic algorithms "
        f"{torch.are_deterministic_algorithms_enabled()}")
  print(f"params: trainable {n_trainable:,} ({n_trainable / 1e6:.1f}M; projectors "
        f"{n_projector:,}), total {n_total:,}")
  if args.pair == "offline" and params["hidden_dim"] == 1024 and not (
      416e6 <= n_trainable <= 418e6):
    print(f"WARNING: trainable params {n_trainable / 1e6:.1f}M, not the ~417M expected")
  print(f"batch {args.batch} x {args.seq} (seed {args.seed}): sections {layout['sections']} "
        f"sharer {layout['section_sharer']}, {layout['fused_slots_per_row']} fused slots per "
        f"row, {layout['target_tokens']} target tokens")
  print(f"AdamW lr {training['learning_rate']} weight decay {training['weight_decay']}, clip "
        f"{training['max_grad_norm']}; load {load_s:.1f} s, warm-up {args.warmup} step(s) "
        f"{warmup_s:.2f} s/step, losses {[round(x, 4) for x in warm_losses]}")
  for i, (t, l, n) in enumerate(zip(times, losses, norms)):
    print(f"  step {i}: {t:.3f} s, loss {l:.4f}, grad norm {n:.4f}")
  print(f"median step {median:.3f} s ({args.steps} timed); RSS after load {rss_load / 1024:.2f} "
        f"GiB, after warm-up {rss_loaded / 1024:.2f} GiB, peak RSS during the timed steps "
        f"{peak / 1024:.2f} GiB "
        f"(+{(peak - rss_loaded) / 1024:.2f}; VmHWM reset: {mem.resettable})")
  if gpu_peak:
    print(f"peak GPU memory during the timed steps: {gpu_peak['allocated_gib']:.2f} GiB "
          f"allocated, {gpu_peak['reserved_gib']:.2f} GiB reserved by torch's allocator")
  print(f"gradient check (one more step, untimed, loss {check_loss:.4f}): "
        f"{grads['projector_nonzero_grad']}/{grads['projector_tensors']} projector tensors "
        f"with a nonzero gradient; model tensors {grads['model_tensors']}: "
        f"{grads['model_requires_grad']} require grad, {grads['model_with_grad']} with a grad")
  print(f"(whole run {time.perf_counter() - start:.0f} s)")
  if args.json:
    record = {"command": " ".join([sys.executable] + sys.argv), "step_times_s": times,
              "median_step_s": median, "losses": losses, "grad_norms": norms,
              "warmup_losses": warm_losses, "check_loss": check_loss, "grad_check": grads,
              "load_s": load_s, "warmup_step_s": warmup_s, "rss_after_load_mib": rss_load,
              "rss_loaded_mib": rss_loaded,
              "peak_timed_mib": peak, "peak_rss_resettable": mem.resettable,
              "gpu_peak": gpu_peak, "pair": args.pair, "device": args.device,
              "dtype": args.dtype,
              "trainable_params": n_trainable, "projector_params": n_projector,
              "total_params": n_total, "projectors": len(model.projector_list),
              "layer_map": pairs, "batch": args.batch, "seq": args.seq, "seed": args.seed,
              "layout": layout, "recipe": args.recipe, "model_config": model_config,
              "training_config": training, "anomaly_detection": anomaly,
              "glibc_tunables": tunables, "torch": torch.__version__,
              "transformers": transformers.__version__, "rosetta_commit": commit, **info,
              "date": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC"}
    with open(args.json, "x") as f:
      json.dump(record, f, indent=1)
    print(f"wrote {args.json}")
  bad = [x for x in warm_losses + losses + [check_loss] if not math.isfinite(x)]
  if bad or grads["model_with_grad"] or grads["model_requires_grad"] or (
      grads["projector_nonzero_grad"] != grads["projector_tensors"]):
    raise SystemExit(f"FAILED: non-finite losses {bad} or gradients in the wrong place {grads}")
  memory = (f"peak GPU memory {gpu_peak['allocated_gib']:.2f} GiB" if gpu_peak else
            f"peak RSS {peak / 1024:.2f} GiB")
  print(f"RATIO released train step: {median:.4f} s/step, {memory} "
        f"({args.pair} pair, {args.device}, {args.dtype}, "
        f"batch {args.batch} x {args.seq}, hidden {params['hidden_dim']}, "
        f"{n_trainable / 1e6:.0f}M trainable, anomaly detection {'on' if anomaly else 'off'}, "
        f"{info['torch_threads']} threads)")


if __name__ == "__main__":
  main()
