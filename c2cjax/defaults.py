"""The default training and evaluation configs; files in ``configs/`` start from one of
them and override fields. Lists are tuples in both (on the command line:
``--config.sharers="('a', 'b')"``, or the flag repeated once per item)."""

import dataclasses

import ml_collections
from ml_collections import config_dict

# The paper's pair and C2C options: trained and evaluated by default.
RECEIVER = "Qwen/Qwen3-0.6B"
SHARERS = ("Qwen/Qwen2.5-0.5B-Instruct",)
# Alignment scheme "offsets" (c2cjax's) or "release" (the released C2C's; c2cjax.sections)
# and the token strategy ("first", "longest") for sharers with another tokenizer.
ALIGNMENT = "offsets"
ALIGNMENT_STRATEGY = "first"
FUSION_MODE = "parallel"

def train_config() -> ml_collections.ConfigDict:
  """``python -m c2cjax.train``'s fields: the paper's recipe."""
  c = ml_collections.ConfigDict()
  c.receiver = RECEIVER
  c.sharers = SHARERS
  c.self_fusion = False  # ablation: fuse the receiver's own cache instead of a sharer's
  # Frozen LLM weights and compute: "auto" is bfloat16 on accelerators (the paper's
  # recipe) and float32 on CPU (no fast bf16 matmuls there). The fuser and its AdamW
  # state stay float32 either way (FuserConfig.param_dtype).
  c.llm_dtype = "auto"
  # Receiver blocks in the backward pass: "full" (recompute each block), "dots_saveable"
  # (keep matmul outputs), "none" (keep everything); see c2cjax.models.layers.remat_policy.
  c.remat = "full"
  c.seed = 0
  c.workdir = "runs/default"

  # The C2C fuser (paper defaults).
  c.fuser = ml_collections.ConfigDict(dict(
      hidden_dim=1024, intermediate_dim=1024, num_layers=3, dropout=0.1,
      initial_temperature=1.0, final_temperature=0.001, anneal_steps=1929,
      gate_init=0.0))  # the release's; see c2cjax.fuse.FuserConfig.gate_init
  # "last_aligned" leaves receiver layers without a sharer layer unfused;
  # "last_aligned_clamped" (the released C2C's) maps them all to sharer layer 0.
  c.layer_map = "last_aligned"
  # The alignment scheme: "release" (the released C2C's data path: the sharer's own chat
  # template, sections, message contents fused; c2cjax.sections) or "offsets" (the
  # receiver's text re-tokenised by character offsets, every prompt token but the last
  # fused). The strategy picks one sharer token per receiver token ("first", "longest").
  c.alignment = ALIGNMENT
  c.alignment_strategy = ALIGNMENT_STRATEGY
  c.fusion_mode = FUSION_MODE
  c.fuse_last = False  # training fuse_mask also covers the last prompt token
  c.fuse_response = False  # ... and the response (C2C generation options of these names)
  # Pass 2 (receiver on the fused cache) starts after the fused prefix when every row's
  # fused slots form one (train.pass2_split), at a multiple of bucket // pass2_parts or
  # one slot before the fused prefix's end: at most pass2_parts * (pass2_parts + 3) / 2
  # compiled (start, fused end) variants per bucket (44 at 8; single-turn data uses a
  # few). 0: always rerun the whole sequence.
  c.pass2_parts = 8
  # Layer pairs each fuser computes together in its loop over pairs (vmapped; the same
  # results): 1 is the fastest on CPU; accelerators may prefer more (device_bench.py
  # --pairs-at-once measures it).
  c.pairs_at_once = 1

  c.data = ml_collections.ConfigDict(dict(
      source="open_hermes25", data_dir="", manual_dir="", max_examples=500_000,
      heldout_fraction=0.01, heldout_split="", context_len=0, split_seed=0, seed=0,
      reply_prefix="",  # text opening every reply that is fused with the prompt (no loss)
      max_len=2048,
      bucket_lengths=(256, 512, 1024), read_threads=4, worker_count=0, prefetch_batches=2,
      max_fused_runs=4))  # release scheme: longer conversations are skipped

  c.per_device_batch_size = 4
  c.global_batch_size = 256
  c.num_epochs = 1
  c.max_steps = -1  # > 0 overrides epochs

  c.optimizer = ml_collections.ConfigDict(dict(
      lr=1e-4, final_lr=0.0, warmup_fraction=0.1, weight_decay=0.01, grad_clip=1.0,
      b1=0.9, b2=0.999))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.log_every = 10
  c.eval_every = 100
  c.eval_batch_size = 8
  c.eval_batches = 0  # 0: the whole held-out split
  c.checkpoint_every = 500
  c.keep_checkpoints = 3
  c.async_checkpointing = True
  c.tensorboard = True
  c.progress_bar = True
  return c


def eval_config() -> ml_collections.ConfigDict:
  """``python -m c2cjax.eval``'s fields; batching and prompts default to ``Settings()``."""
  from c2cjax.evaluation.runner import Settings  # pylint: disable=import-outside-toplevel

  c = ml_collections.ConfigDict()
  c.name = "default"  # reports go to {output_dir}/{name}/
  c.output_dir = "outputs/eval"
  c.receiver = RECEIVER  # c2cjax.models.load.resolve specs, as in training
  c.sharers = SHARERS  # the first serves `sharer`, `t2t` and `c2c`
  c.fusers = ("runs/default/fuser",)  # one checkpoint per sharer (a multi-sharer one counts all)
  c.self_fusers = ()  # c2c_self: a fuser trained with the receiver as its own sharer
  c.random_fuser = False  # missing fuser: a fresh one with open gates (smoke runs only)
  c.allow_mismatch = False  # fusers on other models than they record: a warning (research)
  c.dtype = "float32"
  c.seed = 0  # question selection; tiny:* models are built with the training seeds
  c.alignment = ""  # "": each fuser's recorded scheme; or "offsets" / "release"
  c.alignment_strategy = ALIGNMENT_STRATEGY
  c.fusion_mode = FUSION_MODE

  c.benchmarks = ("mmlu_redux", "openbookqa", "arc_challenge")  # + ceval
  c.subjects = ()  # for mmlu_redux / ceval; empty: all
  c.limit = config_dict.placeholder(int)  # questions per benchmark (seeded); None: all
  c.ceval_path = config_dict.placeholder(str)  # C-Eval directory; None: the HF hub
  c.shard = ""  # "k/n": every n-th question from the k-th (per benchmark); empty: all
  c.merge = ()  # output folders of shards: merge their reports, run nothing
  c.methods = ("logits",)  # logits, cloze, generate
  c.systems = ("receiver", "sharer", "t2t", "c2c")  # + c2c_multi with several sharers

  s = Settings()
  c.batch_size = s.batch_size
  c.cloze_batch_size = s.cloze_batch_size
  c.buckets = s.buckets
  c.continuation_buckets = s.continuation_buckets
  c.max_new_tokens = s.max_new_tokens  # generate method
  c.background_tokens = s.background_tokens  # T2T background budget
  c.warmup = s.warmup  # time after compiling each shape
  c.progress = s.progress
  c.prompts = ml_collections.ConfigDict(dataclasses.asdict(s.prompts))
  c.prompts.system = config_dict.placeholder(str)
  return c
