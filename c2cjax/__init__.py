"""c2cjax: Cache-to-Cache communication between LLMs in JAX/Flax."""

from c2cjax.models import KVCache, LM, ModelConfig, load_model

__version__ = "0.1.0"
__all__ = ["KVCache", "LM", "ModelConfig", "load_model"]
