"""GGUF files (llama.cpp): the transformers config and HF-named tensors, read with ``gguf``.

Since 5.25, transformers reads GGUF files through a reader that imports torch. The JAX path
must not need torch, so the config and the weights are read here with the ``gguf`` package.
The tokenizer still converts through transformers (``c2cjax.offline.load_tokenizer``) and is
cached as plain tokenizer files after the first conversion.
"""

from __future__ import annotations

import pathlib

import numpy as np

from c2cjax.models import gemma, llama
from c2cjax.models.config import ModelConfig

# GGUF ``general.architecture`` -> transformers ``model_type`` (the text-only classes).
MODEL_TYPES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3", "gemma3": "gemma3_text"}
# ``<arch>.<key>`` -> transformers config field, as llama.cpp's converters write them.
_CONFIG_KEYS = {
    "context_length": "max_position_embeddings",
    "block_count": "num_hidden_layers",
    "embedding_length": "hidden_size",
    "feed_forward_length": "intermediate_size",
    "attention.head_count": "num_attention_heads",
    "attention.head_count_kv": "num_key_value_heads",
    "attention.layer_norm_rms_epsilon": "rms_norm_eps",
    "attention.sliding_window": "sliding_window",
    "rope.freq_base": "rope_theta",
}
_TOKEN_IDS = {"bos_token_id": "bos_token_id", "eos_token_id": "eos_token_id",
              "unk_token_id": "unknown_token_id", "pad_token_id": "padding_token_id"}


def _value(field):
  """A scalar or string metadata value (``ReaderField.contents`` is missing in gguf < 0.11)."""
  import gguf

  if field.types and field.types[0] == gguf.GGUFValueType.STRING:
    return bytes(field.parts[-1]).decode("utf-8")
  return field.parts[-1].tolist()[0]


def reader(path: str | pathlib.Path):
  """A ``gguf.GGUFReader`` of ``path``: parsing the metadata costs seconds (8 s for
  Gemma-3-270M's 262k-token vocabulary on 2 cores), so callers read a file once and pass
  the reader to :func:`config_dict` and :func:`state_dict`."""
  import gguf

  return gguf.GGUFReader(str(path))


def config_dict(path: str | pathlib.Path, gguf_reader=None) -> dict:
  """The transformers config fields of a GGUF file (pass to ``AutoConfig.for_model``).

  Raises:
    ValueError: an architecture c2cjax does not read from GGUF, or RoPE scaling (which
      llama.cpp stores in forms transformers' own configs do not share): load the model's
      safetensors directory instead.
  """
  r = gguf_reader if gguf_reader is not None else reader(path)
  fields = r.fields
  arch = _value(fields["general.architecture"])
  if arch not in MODEL_TYPES:
    raise ValueError(f"GGUF file {path} holds a {arch!r} model; c2cjax reads "
                     f"{', '.join(sorted(MODEL_TYPES))} from GGUF (other architectures: load "
                     "their safetensors directory)")
  tensors = {t.name: t for t in r.tensors}
  scaling = fields.get(f"{arch}.rope.scaling.type")
  if "rope_freqs.weight" in tensors or (scaling is not None and _value(scaling) != "none"):
    raise ValueError(f"GGUF file {path} uses RoPE scaling, which c2cjax does not read from "
                     "GGUF; load the model's safetensors directory instead")
  out = {"model_type": MODEL_TYPES[arch]}
  for key, name in _CONFIG_KEYS.items():
    if f"{arch}.{key}" in fields:
      out[name] = _value(fields[f"{arch}.{key}"])
  for key in (f"{arch}.attention.key_length", f"{arch}.rope.dimension_count"):
    if key in fields:  # the first present wins: Qwen3 and Gemma 3 set both, Llama only one
      out["head_dim"] = _value(fields[key])
      break
  if f"{arch}.vocab_size" in fields:
    out["vocab_size"] = _value(fields[f"{arch}.vocab_size"])
  elif "tokenizer.ggml.tokens" in fields:
    out["vocab_size"] = len(fields["tokenizer.ggml.tokens"].data)
  else:  # token_embd is [hidden, vocab] in ggml's fastest-first order
    out["vocab_size"] = int(tensors["token_embd.weight"].shape[-1])
  for name, key in _TOKEN_IDS.items():
    if f"tokenizer.ggml.{key}" in fields:
      out[name] = _value(fields[f"tokenizer.ggml.{key}"])
  out["tie_word_embeddings"] = "output.weight" not in tensors
  return out


def state_dict(path: str | pathlib.Path, model_type: str, cfg: ModelConfig,
               gguf_reader=None) -> dict[str, np.ndarray]:
  """Dequantised GGUF tensors under their HF names (llama.cpp conventions undone)."""
  import gguf

  r = gguf_reader if gguf_reader is not None else reader(path)
  layer_names = {
      "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
      "attn_output": "self_attn.o_proj", "attn_q_norm": "self_attn.q_norm",
      "attn_k_norm": "self_attn.k_norm", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
      "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm",
  }
  if model_type in gemma.MODEL_TYPES:
    layer_names.update({"post_attention_norm": "post_attention_layernorm",
                        "ffn_norm": "pre_feedforward_layernorm",
                        "post_ffw_norm": "post_feedforward_layernorm"})
  else:
    layer_names["ffn_norm"] = "post_attention_layernorm"
  top = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
  state = {}
  for t in r.tensors:
    parts = t.name.split(".")
    if parts[0] == "blk":
      base = layer_names.get(parts[2])
      if base is None:
        raise ValueError(f"GGUF tensor {t.name!r} has no known HF counterpart")
      name = f"model.layers.{parts[1]}.{base}.{parts[3]}"
    elif parts[0] in top:
      name = f"{top[parts[0]]}.{parts[1]}"
    else:
      continue  # nothing c2cjax reads (a rope_freqs tensor is refused by config_dict)
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    if model_type in llama.MODEL_TYPES and parts[0] == "blk" and parts[2] in ("attn_q", "attn_k"):
      heads = cfg.num_heads if parts[2] == "attn_q" else cfg.num_kv_heads
      # llama.cpp interleaves the rotary halves; undo as transformers does.
      w = w.reshape(heads, w.shape[0] // heads // 2, 2, -1).swapaxes(1, 2).reshape(w.shape)
    if model_type in gemma.MODEL_TYPES and name.endswith("norm.weight"):
      w = w - 1.0  # GGUF stores Gemma's (1 + w)
    state[name] = w
  return state


def problem(path: pathlib.Path) -> str | None:
  """Why ``path`` is not a complete GGUF file (None if it reads). Run after a failure, to
  tell a truncated or corrupt file from other errors: parsing costs seconds."""
  import gguf

  size = path.stat().st_size
  with open(path, "rb") as f:
    magic = f.read(4)
  if magic != b"GGUF":
    return f"is not a GGUF file (it starts with {magic!r}, not b'GGUF')"
  try:
    r = gguf.GGUFReader(str(path))
  except Exception as e:  # pylint: disable=broad-except  # struct.error, ValueError, ...
    return (f"is truncated or corrupt ({size} bytes; the GGUF reader failed: "
            f"{type(e).__name__}: {e})")
  for t in r.tensors:
    end = int(t.data_offset) + int(t.n_bytes)
    if end > size:
      return f"is truncated: tensor {t.name!r} ends at byte {end}, the file has {size}"
  return None
