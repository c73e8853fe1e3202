"""One process of tests/test_multiprocess.py: trains configs/tiny.py with a global batch of
8 rows in micro-batches of 4 (one row a device) and logs which rows it read.

Its models are configs/tiny.py's random tiny Qwen3 receiver and a tiny Qwen2 sharer on the
committed tiny tokenizers (tests/fixtures/rosetta/tokenizers), not the offline GGUFs'
tokenizers: the test needs no offline package, and its five processes skip loading a
262k-entry tokenizer and a 262k-row embedding (the test took 139 -> 116 s alone on 2 cores).
Byte-level tiny tokenizers give longer prompts, hence ``max_len`` 192: the test fails by
name if a host skips a record.

  python tests/multiprocess_worker.py WORKDIR TFDS_DIR READS_DIR [MAX_STEPS CHECKPOINT_EVERY
      [STOP_AFTER]]

STOP_AFTER: return after that many steps of this call (``train_and_evaluate``'s
``stop_after``: no checkpoint, no final export).

Multi-process runs set JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID
(``c2cjax.train`` initialises ``jax.distributed`` from them) and XLA_FLAGS for fake CPU
devices. Every batch this process reads goes to ``READS_DIR/reads_<process>.jsonl`` as
``{"step": s, "rows": [hash of each row's real tokens]}`` (appended, so a restarted
process adds to it).
"""

import hashlib
import importlib.util
import json
import os
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOKENIZERS = ROOT / "tests" / "fixtures" / "rosetta" / "tokenizers"


def config():
  spec = importlib.util.spec_from_file_location("tiny_cfg", ROOT / "configs" / "tiny.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  c.receiver = f"tiny:qwen3@{TOKENIZERS / 'qwen3'}"
  c.sharers = (f"tiny:qwen2@{TOKENIZERS / 'qwen2'}",)
  c.global_batch_size = 8
  c.per_device_batch_size = 1  # 4 devices in all: micro-batches of 4, 2 of them a step
  c.data.max_len = 192  # the prompts of steps 1-4 fit: no host skips one (see the pipeline)
  c.max_steps = 4
  c.pass2_parts = 0  # one step program per process (tests/test_train.py covers the split)
  c.checkpoint_every = 2
  c.eval_every = 0
  c.tensorboard = False
  return c


def row_hashes(batch) -> list[str]:
  return [hashlib.sha1(np.asarray(row)[np.asarray(mask) == 1].tobytes()).hexdigest()[:16]
          for row, mask in zip(batch["receiver_ids"], batch["attention_mask"])]


def main(workdir: str, tfds_dir: str, reads_dir: str, max_steps: str = "4",
         checkpoint_every: str = "2", stop_after: str | None = None):
  from c2cjax import rundir
  from c2cjax.sharding import maybe_initialize_distributed
  from c2cjax.train import train_and_evaluate
  # From the JAX_* variables (train_and_evaluate's own call is then a no-op); a long
  # heartbeat timeout, since a busy test machine can stall a process for a minute.
  maybe_initialize_distributed(heartbeat_timeout_seconds=900)
  cfg = config()
  cfg.data.data_dir = tfds_dir
  cfg.max_steps, cfg.checkpoint_every = int(max_steps), int(checkpoint_every)
  process = int(os.environ.get("JAX_PROCESS_ID", "0"))
  with open(pathlib.Path(reads_dir) / f"reads_{process}.jsonl", "a") as log:
    def on_batch(step, batch):
      log.write(json.dumps({"step": step, "rows": row_hashes(batch)}) + "\n")
      log.flush()
    try:
      train_and_evaluate(cfg, workdir, on_batch=on_batch,
                         stop_after=None if stop_after is None else int(stop_after))
    except rundir.Interrupted as e:  # a stop signal (tests/test_multiprocess.py sends one)
      print(f"WORKER_STOPPED {e}", flush=True)
      os._exit(3)  # like c2cjax.train: no teardown under XLA's threads
  import jax
  print(f"WORKER_DONE process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.device_count()} devices", flush=True)


if __name__ == "__main__":
  main(*sys.argv[1:7])
