"""GGUF files read by c2cjax itself (config and tensors), without torch."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from c2cjax import offline
from c2cjax.models import config_from_hf, gguf_file

gguf = pytest.importorskip("gguf")


def _offline(which):
  try:
    return offline.smollm2_gguf() if which == "smollm2" else offline.gemma3_gguf()
  except offline.MissingOfflinePackage as e:
    pytest.skip(str(e))


@pytest.mark.realweights
@pytest.mark.torch
@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_config_equals_transformers_reading_the_same_file(which):
  pytest.importorskip("torch")
  from transformers import AutoConfig
  path = _offline(which)
  ours = config_from_hf(AutoConfig.for_model(**gguf_file.config_dict(path)))
  theirs = config_from_hf(AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name))
  assert ours == theirs


_NO_TORCH = """
import json, sys
sys.modules["torch"] = None  # as on an install without torch: `import torch` fails
from c2cjax import load_model, offline
lm = load_model(offline.smollm2_gguf(), tokenizer=False, use_cache=False)
out = {"layers": lm.config.num_layers, "heads": lm.config.num_heads,
       "kv_heads": lm.config.num_kv_heads, "torch": sys.modules["torch"] is None}
try:
  offline.load_tokenizer(offline.smollm2_gguf(), cache=False)
  out["tokenizer"] = "loaded"
except ImportError as e:
  out["tokenizer"] = str(e)
from c2cjax.runtime import cache_root
try:  # with its tokenizer, converting (and caching) the weights
  load_model(offline.smollm2_gguf())
  out["with_tokenizer"] = "loaded"
except ImportError as e:
  out["with_tokenizer"] = str(e)
out["params_cached"] = len(list((cache_root() / "params").glob("*.json")))
print("RESULT" + json.dumps(out))
"""


@pytest.mark.realweights
def test_gguf_weights_load_without_torch(tmp_path):
  _offline("smollm2")
  env = dict(os.environ, C2CJAX_CACHE=str(tmp_path), JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", _NO_TORCH], env=env, capture_output=True,
                        text=True, timeout=600, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT")[-1])
  assert (out["layers"], out["heads"], out["kv_heads"], out["torch"]) == (30, 9, 3, True)
  # The tokenizer converts through transformers: either it needs no torch (older releases)
  # or the error says so and how to get past it, never a bare ModuleNotFoundError.
  if out["tokenizer"] != "loaded":
    assert "needs torch" in out["tokenizer"] and "pip install torch" in out["tokenizer"]
    # load_model reads the tokenizer before converting the weights: it fails before them
    assert out["with_tokenizer"] == out["tokenizer"] and out["params_cached"] == 0
  else:
    assert out["with_tokenizer"] == "loaded" and out["params_cached"] == 1


def _write_gguf(path, arch, *, rope_freqs=False):
  w = gguf.GGUFWriter(str(path), arch)
  w.add_block_count(1)
  w.add_context_length(64)
  w.add_embedding_length(8)
  w.add_feed_forward_length(16)
  w.add_head_count(2)
  w.add_head_count_kv(1)
  w.add_layer_norm_rms_eps(1e-6)
  w.add_rope_freq_base(10_000.0)
  w.add_tensor("token_embd.weight", np.zeros((32, 8), np.float32))
  if rope_freqs:
    w.add_tensor("rope_freqs.weight", np.ones((2,), np.float32))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()


def test_config_dict_from_a_written_file(tmp_path):
  path = tmp_path / "m.gguf"
  _write_gguf(path, "qwen3")
  d = gguf_file.config_dict(path)
  assert d == {"model_type": "qwen3", "max_position_embeddings": 64, "num_hidden_layers": 1,
               "hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2,
               "num_key_value_heads": 1, "rms_norm_eps": pytest.approx(1e-6),
               "rope_theta": 10_000.0, "vocab_size": 32, "tie_word_embeddings": True}


@pytest.mark.parametrize("arch,rope_freqs,match", [
    ("phi3", False, "holds a 'phi3' model; c2cjax reads gemma3, llama, qwen2, qwen3"),
    ("llama", True, "uses RoPE scaling"),
])
def test_unsupported_gguf_is_refused_by_name(tmp_path, arch, rope_freqs, match):
  path = tmp_path / "m.gguf"
  _write_gguf(path, arch, rope_freqs=rope_freqs)
  with pytest.raises(ValueError, match=match):
    gguf_file.config_dict(path)
