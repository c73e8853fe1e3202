"""c2cjax: Cache-to-Cache communication between LLMs in JAX/Flax.

Packages: ``models`` (frozen LLM ports, KV caches, pure prefill/decode, loading), ``fuse``
(the fuser alone: config, modules, ``fuse``, checkpoints), ``c2c`` (C2C's pure device
programs and the host-side ``C2C`` class), ``sections`` (the release alignment scheme),
``data`` (training data), ``evaluation`` (multiple-choice evaluation), ``analysis`` (the
paper's oracles and cache analyses).
Modules: ``align`` (token alignment), ``release_prefill``, ``sharer_context``, ``sampling``
(decode loop), ``text`` (tokenizer side), ``inputs`` (input checks), ``sharding``,
``train`` / ``train_step`` / ``rundir`` / ``config_check`` / ``defaults`` (training),
``eval`` and ``demo`` (command lines), ``offline``, ``runtime``, ``files``.
"""

from c2cjax.models import KVCache, LM, ModelConfig, load_model

__version__ = "0.1.0"
__all__ = ["KVCache", "LM", "ModelConfig", "load_model"]
