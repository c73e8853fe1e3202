"""Training and prompt data for C2C.

Modules (import the one you need; ``sources`` pulls in tensorflow-datasets;
tokenizer-side helpers shared with models and C2C live in ``c2cjax.text``):
  chat: chat records -> receiver ids, loss / fuse masks and aligned sharer ids.
  sources: TFDS builders for OpenHermes-2.5 and the shipped offline instruction
    files, plus seeded first-N / held-out splits.
  pipeline: the grain input pipeline (shuffle, host sharding, padded batches,
    checkpointable iterator).
  synthetic: a seeded private-document task (invented people and facts) for transfer.
"""
