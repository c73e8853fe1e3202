"""Default training config; files in ``configs/`` start from it and override fields."""

import ml_collections


def train_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.receiver = "Qwen/Qwen3-0.6B"
  c.sharers = ("Qwen/Qwen2.5-0.5B-Instruct",)
  c.self_fusion = False  # ablation: fuse the receiver's own cache instead of a sharer's
  c.llm_dtype = "bfloat16"
  c.remat = True
  c.seed = 0
  c.workdir = "runs/default"

  # The C2C fuser (paper defaults).
  c.fuser = ml_collections.ConfigDict(dict(
      hidden_dim=1024, intermediate_dim=1024, num_layers=3, dropout=0.1,
      initial_temperature=1.0, final_temperature=0.001, anneal_steps=1929))
  c.layer_map = "last_aligned"
  c.alignment = "first"
  c.fusion_mode = "parallel"
  c.fuse_last = False  # training fuse_mask also covers the last prompt token
  c.fuse_response = False  # ... and the response (C2C generation options of these names)

  c.data = ml_collections.ConfigDict(dict(
      source="open_hermes25", data_dir="", manual_dir="", max_examples=500_000,
      heldout_fraction=0.01, heldout_split="", context_len=0, split_seed=0, seed=0,
      max_len=2048,
      bucket_lengths=(256, 512, 1024), read_threads=4, worker_count=0, prefetch_batches=2))

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
