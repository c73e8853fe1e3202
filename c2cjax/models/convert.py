"""HF-named tensors -> c2cjax params, once at load.

Every source (safetensors directory, hub snapshot, GGUF file) first becomes a mapping from
Hugging Face parameter names (``model.layers.3.self_attn.q_proj.weight`` ...) to NumPy
arrays; :func:`params_from_hf` then reshapes them into the stacked Linen param tree. A
tensor whose shape does not match the config is an error that names it.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np

from c2cjax.models.config import ModelConfig

# Text-model prefixes used by transformers for the architectures we support
# (Gemma 3 multimodal checkpoints nest the text model).
_PREFIXES = ("model.", "model.language_model.", "language_model.model.", "")


class MissingTensor(KeyError):
  pass


def _finder(state: Mapping[str, np.ndarray]) -> Callable[[str], np.ndarray]:
  for prefix in _PREFIXES:
    if f"{prefix}embed_tokens.weight" in state:
      break
  else:
    raise MissingTensor(
        "no embedding tensor (model.embed_tokens.weight) found; first names: "
        + ", ".join(list(state)[:5]))

  def get(name: str, shape: tuple[int, ...]) -> np.ndarray:
    full = name if name == "lm_head.weight" else prefix + name
    if full not in state:
      raise MissingTensor(f"checkpoint has no tensor {full!r}")
    arr = np.asarray(state[full])
    if tuple(arr.shape) != tuple(shape):
      raise ValueError(
          f"tensor {full!r} has shape {tuple(arr.shape)} but the config expects {tuple(shape)}")
    return arr

  return get


def params_from_hf(cfg: ModelConfig, state: Mapping[str, np.ndarray], norms: Mapping[str, str],
                   dtype=np.float32) -> dict:
  """Builds the param tree of :class:`c2cjax.models.layers.Decoder` from HF tensors.

  Args:
    cfg: the model config.
    state: HF name -> array (torch layout: Linear weights are [out, in]).
    norms: HF per-layer norm name -> our block norm name (from the architecture module).
    dtype: NumPy/ml_dtypes dtype of the returned arrays.
  """
  get = _finder(state)
  d, f, n, k, h, v = (cfg.hidden_size, cfg.intermediate_size, cfg.num_heads, cfg.num_kv_heads,
                      cfg.head_dim, cfg.vocab_size)

  def per_layer(fmt: str, shape, transform=lambda a: a):
    out = []
    for i in range(cfg.num_layers):
      name = fmt.format(i=i)
      out.append(transform(get(name, shape)))
    return np.stack(out).astype(dtype)

  lin = "layers.{{i}}.{}.weight"
  attn = {
      "q": per_layer(lin.format("self_attn.q_proj"), (n * h, d), lambda w: w.T.reshape(d, n, h)),
      "k": per_layer(lin.format("self_attn.k_proj"), (k * h, d), lambda w: w.T.reshape(d, k, h)),
      "v": per_layer(lin.format("self_attn.v_proj"), (k * h, d), lambda w: w.T.reshape(d, k, h)),
      "o": per_layer(lin.format("self_attn.o_proj"), (d, n * h), lambda w: w.T.reshape(n, h, d)),
  }
  if cfg.qkv_bias:
    for p, heads in (("q", n), ("k", k), ("v", k)):
      attn[f"{p}_bias"] = per_layer(f"layers.{{i}}.self_attn.{p}_proj.bias", (heads * h,),
                                    lambda b, heads=heads: b.reshape(heads, h))
  if cfg.qk_norm:
    for p in ("q", "k"):
      attn[f"{p}_norm"] = {"scale": per_layer(f"layers.{{i}}.self_attn.{p}_norm.weight", (h,))}
  layers = {
      "attn": attn,
      "mlp": {
          "gate": per_layer(lin.format("mlp.gate_proj"), (f, d), np.transpose),
          "up": per_layer(lin.format("mlp.up_proj"), (f, d), np.transpose),
          "down": per_layer(lin.format("mlp.down_proj"), (d, f), np.transpose),
      },
  }
  for hf_name, ours in norms.items():
    layers[ours] = {"scale": per_layer(f"layers.{{i}}.{hf_name}.weight", (d,))}

  params = {
      "embed": get("embed_tokens.weight", (v, d)).astype(dtype),
      "layers": layers,
      "final_norm": {"scale": get("norm.weight", (d,)).astype(dtype)},
  }
  if not cfg.tie_embeddings:
    params["lm_head"] = get("lm_head.weight", (v, d)).T.astype(dtype)
  return params


def unstack_layers(params: dict, num_layers: int) -> dict:
  """Stacked ``layers`` subtree -> ``layers_0 .. layers_{L-1}`` (``scan_layers=False``)."""
  import jax
  out = {k: v for k, v in params.items() if k != "layers"}
  for i in range(num_layers):
    out[f"layers_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["layers"])
  return out


def stack_layers(params: dict, num_layers: int) -> dict:
  """Inverse of :func:`unstack_layers`."""
  import jax
  import jax.numpy as jnp
  out = {k: v for k, v in params.items() if not k.startswith("layers_")}
  out["layers"] = jax.tree.map(lambda *xs: jnp.stack(xs),
                               *[params[f"layers_{i}"] for i in range(num_layers)])
  return out


# The weight matrices (projections, MLP, embedding, LM head); norm scales and biases are
# small and stay in the compute dtype.
MATRICES = ("q", "k", "v", "o", "gate", "up", "down", "embed", "lm_head")


def cast_weights(params: dict, dtype) -> dict:
  """``params`` with every weight matrix (:data:`MATRICES`) stored as ``dtype``.

  The model computes in its own dtype either way: ``LM.with_layout(weight_dtype=...)``
  stores the matrices in bfloat16 and keeps fp32 activations (half the bytes that batch-1
  decode reads; the products are the fp32 products of the rounded weights).
  """
  import jax
  import jax.numpy as jnp

  def cast(path, a):
    name = getattr(path[-1], "key", None)
    return a.astype(dtype) if name in MATRICES and jnp.issubdtype(a.dtype, jnp.floating) else a
  return jax.tree_util.tree_map_with_path(cast, params)
