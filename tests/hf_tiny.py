"""Tiny random Hugging Face models for parity tests (built and saved by the tests)."""

from __future__ import annotations

import pathlib

from c2cjax.models.tiny import KINDS, hf_config  # noqa: F401


def build(kind: str, directory: pathlib.Path | None = None, seed: int = 0):
  """A random fp32 HF causal LM (saved to ``directory`` when given)."""
  import torch
  import transformers as tf

  torch.manual_seed(seed)
  model = tf.AutoModelForCausalLM.from_config(hf_config(kind)).float().eval()
  with torch.no_grad():  # norms start at 1 / 0: perturb so their conversion is tested
    for name, p in model.named_parameters():
      if "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  if directory is not None:
    model.save_pretrained(directory)
  return model


def loaded(kind: str, tmp_path_factory):
  """(kind, the tiny HF model, the same weights loaded by c2cjax) in a fresh temp folder."""
  from c2cjax.models import load_model  # pylint: disable=import-outside-toplevel
  d = tmp_path_factory.mktemp(kind)
  hf = build(kind, d)
  return kind, hf, load_model(d, tokenizer=False, use_cache=False)
