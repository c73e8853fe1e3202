"""Frozen, typed model configs shared by every architecture.

Each architecture module (``llama.py``, ``qwen.py``, ``gemma.py``) builds a
:class:`ModelConfig` from a Hugging Face config; the shared layers read only this.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from c2cjax.models.attention import check_implementation


@dataclasses.dataclass(frozen=True)
class RopeConfig:
  """Rotary embedding parameters (HF ``rope_parameters`` of one attention type)."""

  theta: float = 10_000.0
  kind: str = "default"  # default | linear | llama3
  factor: float = 1.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position: int = 8192

  def inv_freq(self, head_dim: int) -> np.ndarray:
    """[head_dim // 2] inverse frequencies, float64, as HF computes them."""
    inv = 1.0 / (self.theta ** (np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float64) / head_dim))
    if self.kind in ("default", None):
      return inv
    if self.kind == "linear":
      return inv / self.factor
    if self.kind == "llama3":
      low_wavelen = self.original_max_position / self.low_freq_factor
      high_wavelen = self.original_max_position / self.high_freq_factor
      wavelen = 2 * math.pi / inv
      scaled = np.where(wavelen > low_wavelen, inv / self.factor, inv)
      smooth = (self.original_max_position / wavelen - self.low_freq_factor) / (
          self.high_freq_factor - self.low_freq_factor)
      smoothed = (1 - smooth) * scaled / self.factor + smooth * scaled
      medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
      return np.where(medium, smoothed, scaled)
    raise ValueError(f"Unsupported RoPE type {self.kind!r}; supported: default, linear, llama3.")

  @classmethod
  def from_hf(cls, params: dict[str, Any] | None, default_theta: float = 10_000.0) -> "RopeConfig":
    """From one HF ``rope_parameters`` dict (transformers 5) or legacy ``rope_scaling``."""
    params = dict(params or {})
    kind = params.get("rope_type", params.get("type", "default")) or "default"
    return cls(
        theta=float(params.get("rope_theta", default_theta)),
        kind=kind,
        factor=float(params.get("factor", 1.0) or 1.0),
        low_freq_factor=float(params.get("low_freq_factor", 1.0)),
        high_freq_factor=float(params.get("high_freq_factor", 4.0)),
        original_max_position=int(params.get("original_max_position_embeddings", 8192)),
    )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything the shared decoder layers need. Hashable, so usable as a jit static."""

  arch: str
  vocab_size: int
  hidden_size: int
  intermediate_size: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rms_eps: float = 1e-6
  rope: RopeConfig = RopeConfig()
  local_rope: RopeConfig | None = None  # Gemma 3 sliding layers
  sliding_window: int | None = None
  layer_is_local: tuple[bool, ...] = ()  # per layer: sliding-window attention
  qkv_bias: bool = False
  qk_norm: bool = False
  norm_offset: float = 0.0  # Gemma: RMSNorm scales by (1 + w)
  sandwich_norm: bool = False  # Gemma: extra post-attention / post-MLP norms
  embed_scale: float | None = None  # Gemma: sqrt(hidden) (cast to the param dtype)
  activation: str = "silu"  # silu (SwiGLU) | gelu_tanh (GeGLU)
  tie_embeddings: bool = False
  attn_scale: float | None = None  # default head_dim ** -0.5
  attn_softcap: float | None = None
  final_softcap: float | None = None
  max_position_embeddings: int = 32768
  bos_token_id: int | None = None
  eos_token_ids: tuple[int, ...] = ()
  pad_token_id: int | None = None
  # Attention kernel (c2cjax.models.attention): auto | einsum | causal | chunked | cudnn; key
  # block of the chunked kernel (query block of causal). Not from HF: dataclasses.replace.
  attention: str = "auto"
  attention_block: int = 512

  def __post_init__(self):
    check_implementation(self.attention)
    if self.attention_block < 1:
      raise ValueError(f"attention_block must be positive, got {self.attention_block}")
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} is not a multiple of num_kv_heads={self.num_kv_heads}")
    if self.layer_is_local and len(self.layer_is_local) != self.num_layers:
      raise ValueError("layer_is_local must have one entry per layer")

  @property
  def scale(self) -> float:
    return self.attn_scale if self.attn_scale is not None else self.head_dim ** -0.5

  @property
  def local_flags(self) -> np.ndarray:
    """[L] bool, True for sliding-window layers."""
    if not self.layer_is_local:
      return np.zeros((self.num_layers,), bool)
    return np.asarray(self.layer_is_local, bool)


def eos_ids(value) -> tuple[int, ...]:
  """HF ``eos_token_id`` (int, list or None) -> tuple."""
  if value is None:
    return ()
  if isinstance(value, (list, tuple)):
    return tuple(int(v) for v in value)
  return (int(value),)
