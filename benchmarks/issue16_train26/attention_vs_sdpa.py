"""One layer of SmolLM2-135M's 8 x 256 prefill attention, best of 10: c2cjax's einsum
attention (the default at <= 512 keys before this session), torch's causal
scaled_dot_product_attention and c2cjax's causal kernel (the default since).

  python benchmarks/issue16_train26/attention_vs_sdpa.py   (twenty-sixth session)
"""
import time, jax, jax.numpy as jnp, torch
from c2cjax.models import attention
B,S,K,G,H = 8,256,3,3,64
q = jax.random.normal(jax.random.PRNGKey(0),(B,S,K,G,H)); k = jax.random.normal(jax.random.PRNGKey(1),(B,K,S,H)); v = jax.random.normal(jax.random.PRNGKey(2),(B,K,S,H))
mask = jnp.broadcast_to(jnp.tril(jnp.ones((S,S),bool)), (B,S,S))
f = jax.jit(lambda q,k,v,m: attention.einsum_attention(q,k,v,m,scale=0.125))
f(q,k,v,mask).block_until_ready()
best=9
for _ in range(10):
    t=time.perf_counter(); f(q,k,v,mask).block_until_ready(); best=min(best,time.perf_counter()-t)
print(f"c2cjax einsum attention 8x256, one layer: {best*1e3:.1f} ms; x30 layers {best*30:.2f} s")
tq = torch.randn(B,K*G,S,H); tk=torch.randn(B,K*G,S,H); tv=torch.randn(B,K*G,S,H)
torch.set_num_threads(2)
for _ in range(3): torch.nn.functional.scaled_dot_product_attention(tq,tk,tv,is_causal=True)
best=9
for _ in range(10):
    t=time.perf_counter(); torch.nn.functional.scaled_dot_product_attention(tq,tk,tv,is_causal=True); best=min(best,time.perf_counter()-t)
print(f"torch sdpa causal, one layer: {best*1e3:.1f} ms; x30 layers {best*30:.2f} s")
g = jax.jit(lambda q,k,v,m: attention.causal_attention(q,k,v,m,scale=0.125))
g(q,k,v,mask).block_until_ready()
best=9
for _ in range(10):
    t=time.perf_counter(); g(q,k,v,mask).block_until_ready(); best=min(best,time.perf_counter()-t)
print(f"c2cjax causal attention (query blocks of {attention.CAUSAL_Q_BLOCK}), one layer: {best*1e3:.1f} ms; x30 layers {best*30:.2f} s")
