"""HF folders of the paper's main pair with random weights, for the released code's benchmarks.

``original_train.py --pair paper`` and ``original_query.py --pair paper`` time the released
PyTorch code at the paper's shapes (receiver Qwen3-0.6B, sharer Qwen2.5-0.5B-Instruct) where
no checkpoint can be downloaded (a GPU machine with no network): this writes both models from
their published ``config.json`` values (``c2cjax/models/paper_configs.json``, the file
``c2cjax.models.paper`` builds c2cjax's random models from), with seeded random weights, as
``save_pretrained`` folders that the released code's ``from_pretrained`` calls load unchanged.
It imports neither jax nor c2cjax, so it runs under the original code's transformers (4.52.4)
as well as ours.

Tokenizers: the tests' tiny Qwen3- and Qwen2-style tokenizers
(``tests/fixtures/rosetta/tokenizers``; 151,936-row embeddings, far fewer tokens: the
benchmarks feed ids, and the tokenizer only supplies the pad id and chat template).

  python3 benchmarks/paper_hf.py DIR [--dtype bfloat16|float32]

writes DIR/qwen3-0.6b and DIR/qwen2.5-0.5b-instruct (each refused if it exists).
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, os.pardir)
CONFIGS = os.path.join(ROOT, "c2cjax", "models", "paper_configs.json")
sys.path.insert(0, os.path.join(ROOT, "tests", "fixtures", "rosetta"))

NAMES = ("qwen3-0.6b", "qwen2.5-0.5b-instruct")  # receiver, sharer (c2cjax.models.paper.MODELS)
TOKENIZERS = {"qwen3-0.6b": "qwen3", "qwen2.5-0.5b-instruct": "qwen2"}


def published(name: str) -> dict:
  with open(CONFIGS) as f:
    values = json.load(f)[name]
  values.pop("source", None)
  return values


def write(root: str, dtype: str = "bfloat16") -> list[str]:
  """Writes both folders under ``root`` (module doc); returns their paths."""
  import torch
  import transformers
  import tiny_tokenizers  # pylint: disable=import-outside-toplevel

  paths = [os.path.join(root, n) for n in NAMES]
  for p in paths:
    if os.path.exists(p):
      raise SystemExit(f"{p} exists; not overwriting it")
  for seed, (name, path) in enumerate(zip(NAMES, paths)):
    values = published(name)
    config = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).to(getattr(torch, dtype))
    model.save_pretrained(path)
    tiny_tokenizers.load(TOKENIZERS[name]).save_pretrained(path)
    print(f"wrote {path}: {type(model).__name__}, "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:.0f}M params, {dtype}")
  return paths


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
  ap.add_argument("dir", help="where the two folders go")
  ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
  args = ap.parse_args()
  write(args.dir, args.dtype)


if __name__ == "__main__":
  main()
