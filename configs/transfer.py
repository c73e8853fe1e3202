"""Private-document transfer (issue 13): the sharer reads a document, the receiver only the
question, on the synthetic task of ``c2cjax.data.synthetic`` (held-out: other entities).

Receiver SmolLM2-135M-Instruct (question only), sharer Gemma-3-270M (document + question).
``:self`` is the easiest case: the sharer is the receiver model itself reading the document
(same cache space). Short-answer form ("The answer is: <value>"), scored in the evaluation
by the likelihood of each option's value after "The answer is:" (the ``cloze`` method); the
135M receiver picks "A" whatever the document says under letter logits, even with the
document in its prompt, so the multiple-choice form has no gap to recover at this size.

  python -m c2cjax.train --config configs/transfer.py:self   # runs/transfer_self
  python -m c2cjax.train --config configs/transfer.py        # runs/transfer
  python -m c2cjax.train --config configs/transfer.py:short  # smoke run (a few steps)

Size: 1,500 steps x 4 sequences (the 6,000 training questions once), fuser hidden 256,
gates starting open (``fuser.gate_init=4``), the reply prefix fused with the prompt:
2,840 s (47 min) on this repository's CI machine (2 x86-64 cores, jax CPU, fp32), an
analysis job sharing it for the first 37 of those minutes (1.3-1.9 s a step); held-out
C2C 71.2% against 26.4% for the receiver alone. Shorter runs (120 and 600 steps) stayed
at chance. Results in benchmarks/RESULTS.md,
"Private-document transfer".
"""

from c2cjax.data import synthetic
from c2cjax.defaults import train_config


def get_config(variant: str = "gemma"):
  c = train_config()
  c.receiver = "offline:smollm2"
  c.sharers = ("offline:gemma3",)
  c.llm_dtype = "float32"  # bf16 matmuls are slow on CPU
  # Keep the receiver's matmul outputs, recompute the rest in the backward pass: on the
  # local pair 7% less peak memory than "none" and no slower (benchmarks/RESULTS.md).
  c.remat = "dots_with_no_batch_dims_saveable"
  c.alignment = "offsets"  # a sharer context is an offsets-scheme option
  # "The answer is:" opens every reply and is fused with the prompt, its last token ":"
  # included: the slot where a sharer that read the document is about to answer. The
  # evaluation follows (the fuser records both).
  c.fuse_last = True
  c.data.reply_prefix = synthetic.SHORT_PREFIX
  c.workdir = "runs/transfer"
  c.fuser.hidden_dim = 256
  c.fuser.intermediate_dim = 256
  c.fuser.dropout = 0.0
  c.data.source = "synthetic_docs/short"
  c.data.heldout_split = "heldout"
  c.data.context_len = 128  # the longest document is 118 SmolLM2 / 107 Gemma tokens
  c.data.max_len = 64
  c.data.bucket_lengths = (56,)
  c.data.max_examples = 0
  c.per_device_batch_size = 2  # 2 micro-batches of 2: less memory on a shared machine
  c.global_batch_size = 4
  c.max_steps = 1500
  c.optimizer.lr = 1e-3
  c.optimizer.warmup_fraction = 0.05
  c.fuser.anneal_steps = 400
  # Gates start open: at the release's 0 each training draw is a coin flip per token and
  # head and the logits got no consistent gradient. At 600 steps neither setting moved
  # accuracy (30.4% at 0, 27.4% open); 1,500 steps open gave 71.2% (1,500 at 0: not run).
  c.fuser.gate_init = 4.0
  c.log_every = 5
  c.eval_every = 500
  c.eval_batch_size = 4
  c.eval_batches = 16
  c.checkpoint_every = 500
  c.tensorboard = False
  if variant in ("self", "self_short"):
    c.self_fusion = True  # the receiver model reads the document as the sharer
    c.workdir = "runs/transfer_self"
  if variant in ("short", "self_short"):
    c.workdir += "_short"
    c.max_steps = 6
    c.fuser.anneal_steps = 4
    c.eval_every = 6
    c.eval_batches = 1
    c.checkpoint_every = 6
  elif variant not in ("gemma", "self"):
    raise ValueError(f"unknown variant {variant!r} (gemma, self, short, self_short)")
  return c
