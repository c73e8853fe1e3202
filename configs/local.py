"""The embedded default that runs offline on 2 CPU cores (~11 min idle, up to an hour shared).

Receiver SmolLM2-135M-Instruct, sharer Gemma-3-270M (base), both from their PyPI GGUF
packages; the instruction data shipped with the package (GPTeacher + Alpaca demo).
``get_config("short")`` is a few-minute smoke run:

  python -m c2cjax.train --config configs/local.py          # ~11 min on 2 idle cores
  python -m c2cjax.train --config configs/local.py:short    # smoke run

Alignment: the "offsets" scheme, not the released C2C's. Gemma-3-270M (a base model) has
no chat template; the release then renders the sharer's side with its fallback template,
which drops system messages and puts nothing after the response, so the release's own code
cannot build one training example for this pair (its sections do not match SmolLM2's:
``tests/fixtures/rosetta/alignment_real.json``). Offsets alignment works for any pair.
"""

from c2cjax.defaults import train_config


def get_config(variant: str = "full"):
  c = train_config()
  c.receiver = "offline:smollm2"
  c.sharers = ("offline:gemma3",)
  c.llm_dtype = "float32"  # bf16 matmuls are slow on CPU
  c.alignment = "offsets"  # see the module docstring
  c.workdir = "runs/local"
  c.fuser.hidden_dim = 256
  c.fuser.intermediate_dim = 256
  c.data.source = "offline_instruct/all"
  # Keep the receiver's matmul outputs, recompute the rest in the backward pass: on the
  # local pair 7% less peak memory than "none" and no slower (benchmarks/RESULTS.md).
  c.remat = "dots_with_no_batch_dims_saveable"
  c.data.max_len = 128
  c.data.bucket_lengths = (96,)
  c.data.max_examples = 0  # all shipped examples
  c.data.heldout_fraction = 0.01
  c.per_device_batch_size = 4
  c.global_batch_size = 4
  c.max_steps = 160
  c.optimizer.lr = 1e-3  # a small fuser and few steps
  c.fuser.anneal_steps = 100
  c.log_every = 5
  c.eval_every = 80
  c.eval_batch_size = 8
  c.eval_batches = 6
  c.checkpoint_every = 40
  if variant == "short":
    c.workdir = "runs/local_short"
    c.max_steps = 20
    c.fuser.anneal_steps = 10
    c.eval_every = 10
    c.eval_batches = 2
    c.checkpoint_every = 10
  elif variant != "full":
    raise ValueError(f"unknown variant {variant!r} (full, short)")
  return c
