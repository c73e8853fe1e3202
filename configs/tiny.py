"""Random tiny models on the real offline tokenizers: tests and CI smoke runs."""

from c2cjax.defaults import train_config


def get_config():
  c = train_config()
  c.receiver = "tiny:qwen3@offline:smollm2"
  c.sharers = ("tiny:gemma3@offline:gemma3",)
  c.llm_dtype = "float32"
  c.remat = "none"
  # Pass 2 from a multiple of 32 slots: every batch of the alpaca demo at max_len 64 splits
  # at (32, 64), so a run compiles one step program. With the default (8) nearly every
  # tiny batch had its own static split: a 6-step run compiled the step up to 6 times
  # (10 s each on 2 cores).
  c.pass2_parts = 2
  c.workdir = "runs/tiny"
  c.fuser.hidden_dim = 32
  c.fuser.intermediate_dim = 48
  c.fuser.anneal_steps = 4
  c.data.source = "offline_instruct/alpaca_en_demo"
  c.data.max_len = 64
  c.data.bucket_lengths = ()
  c.data.max_examples = 200
  c.data.heldout_fraction = 0.05
  c.data.read_threads = 1
  c.data.prefetch_batches = 0
  c.per_device_batch_size = 2
  c.global_batch_size = 4
  c.max_steps = 6
  c.log_every = 1
  c.eval_every = 3
  c.eval_batch_size = 4
  c.eval_batches = 1
  c.checkpoint_every = 2
  c.keep_checkpoints = 5
  c.tensorboard = True
  c.progress_bar = False
  return c
