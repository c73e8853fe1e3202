"""Private-document transfer (issue 13): every system on held-out synthetic_docs questions.

Receiver SmolLM2-135M-Instruct, sharer Gemma-3-270M; fusers from ``configs/transfer.py``
(``runs/transfer/fuser``, Gemma reads the document) and ``configs/transfer.py:self``
(``runs/transfer_self/fuser``, the receiver model reads it). Missing fusers skip their
system. Scoring: ``cloze`` with the short-answer prompt the fusers were trained on (the
receiver's chat-rendered question, then "The answer is:", which opens the reply: C2C
reads it with the receiver alone on the fused cache, as training runs the reply; each option's value scored as the
continuation; ``cloze`` sums its log-probs, ``cloze_norm`` divides by its characters).
``--config.methods=logits`` scores the multiple-choice form by its letter instead.

  python -m c2cjax.eval --config configs/eval_transfer.py [--config.limit=500] \\
      [--config.systems="('receiver', 'c2c_self')"]
"""

from c2cjax import offline
from c2cjax.data import synthetic
from c2cjax.defaults import eval_config


def get_config():
  c = eval_config()
  c.name = "transfer"
  c.receiver = "offline:smollm2"
  c.sharers = ("offline:gemma3",)
  c.fusers = ("runs/transfer/fuser",)
  c.self_fusers = ("runs/transfer_self/fuser",)
  c.benchmarks = ("synthetic_docs",)
  c.limit = 500
  c.methods = ("cloze",)
  c.systems = ("receiver", "receiver_doc", "sharer_doc", "t2t", "c2c", "c2c_self", "oracle")
  c.prompts.mcq = synthetic.MCQ_TEMPLATE
  c.prompts.cloze = synthetic.cloze_template(offline.load_tokenizer(offline.smollm2_gguf()))
  c.prompts.reply_prefix = synthetic.SHORT_PREFIX  # C2C reads it unfused, as in training
  c.prompts.plain_mcq = "Question: {question}\n{options}\nAnswer:"
  c.background_tokens = 32
  c.buckets = (64, 96, 128, 160, 192, 256, 320, 384)
  return c
