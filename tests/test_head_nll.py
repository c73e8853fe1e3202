"""The chunked head NLL equals the logits path (loss and gradients), fp32."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from c2cjax.models import head_nll as head_nll_lib
from c2cjax.models.config import ModelConfig
from c2cjax.train_step import token_nll


def _case(tied: bool, softcap, seed=0, b=3, s=11, d=8, v=37):
  cfg = ModelConfig(arch="llama", vocab_size=v, hidden_size=d, intermediate_size=16,
                    num_layers=1, num_heads=2, num_kv_heads=1, head_dim=4,
                    tie_embeddings=tied, final_softcap=softcap)
  r = np.random.default_rng(seed)
  table = r.normal(size=(v, d) if tied else (d, v)).astype(np.float32)
  params = {"embed" if tied else "lm_head": jnp.asarray(table)}
  hidden = jnp.asarray(r.normal(size=(b, s, d)).astype(np.float32))
  tokens = jnp.asarray(r.integers(0, v, (b, s)).astype(np.int32))
  mask = jnp.asarray((r.random((b, s)) < 0.7).astype(np.int32))
  return cfg, params, hidden, tokens, mask


def _reference(cfg, params, hidden, tokens, mask):
  table, spec = head_nll_lib.head_table(cfg, params)
  logits = jnp.einsum(f"bsd,{spec}->bsv", hidden, table)
  if cfg.final_softcap:
    logits = jnp.tanh(logits / cfg.final_softcap) * cfg.final_softcap
  return token_nll(logits, tokens, mask)


@pytest.mark.parametrize("tied,softcap,chunk", [(True, None, 4), (False, None, 3),
                                                (True, 30.0, 5), (False, 5.0, 64)])
def test_chunked_head_nll_equals_logits_path(tied, softcap, chunk):
  cfg, params, hidden, tokens, mask = _case(tied, softcap)
  got, n = head_nll_lib.head_nll(cfg, params, hidden, tokens, mask, chunk=chunk)
  want, m = _reference(cfg, params, hidden, tokens, mask)
  np.testing.assert_allclose(float(got), float(want), rtol=1e-5)
  assert float(n) == float(m)
  # Gradient w.r.t. the hidden states, under a scaled loss (the cotangent is used).
  g_got = jax.grad(lambda h: 0.37 * head_nll_lib.head_nll(cfg, params, h, tokens, mask,
                                                          chunk=chunk)[0])(hidden)
  g_want = jax.grad(lambda h: 0.37 * _reference(cfg, params, h, tokens, mask)[0])(hidden)
  np.testing.assert_allclose(np.asarray(g_got), np.asarray(g_want), atol=1e-5, rtol=1e-5)
  # The last position predicts nothing and masked targets add nothing.
  assert np.all(np.asarray(g_got)[:, -1] == 0)


def test_head_is_frozen_and_jit_works():
  cfg, params, hidden, tokens, mask = _case(True, None)
  f = jax.jit(lambda p, h: head_nll_lib.head_nll(cfg, p, h, tokens, mask, chunk=4)[0])
  gp = jax.grad(f)(params, hidden)
  assert float(jnp.abs(gp["embed"]).max()) == 0.0  # stop_gradient: the LM stays frozen
  np.testing.assert_allclose(float(f(params, hidden)),
                             float(_reference(cfg, params, hidden, tokens, mask)[0]), rtol=1e-5)
