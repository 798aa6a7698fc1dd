"""Shared transformer building blocks in Flax NNX; the math lives in flaxzoo.layers.

Dimension key: B batch, T query length, S key/value length, D model width,
N query heads, H head dim, F feedforward width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from flaxzoo.layers import dot_product_attention, gelu_tanh, layer_norm
from flaxzoo.models.cache import LayerKV, write_kv

# GPT-2's initialisation: N(0, 0.02) for weights and embeddings.
default_init = nnx.initializers.normal(stddev=0.02)


class LayerNorm(nnx.Module):
    """Learned scale and bias around `flaxzoo.layers.layer_norm`."""

    def __init__(self, dim: int, *, epsilon: float = 1e-5):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32))
        self.epsilon = epsilon

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        return layer_norm(x_BTD, self.scale[...], self.bias[...], epsilon=self.epsilon)


class MultiHeadAttention(nnx.Module):
    """Self-attention: project to heads, attend, merge heads, project out."""

    def __init__(self, *, embed_dim: int, num_heads: int, dropout_rate: float,
                 out_init_std: float, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        proj = dict(kernel_init=default_init, rngs=rngs)
        self.query = nnx.Linear(embed_dim, embed_dim, **proj)
        self.key = nnx.Linear(embed_dim, embed_dim, **proj)
        self.value = nnx.Linear(embed_dim, embed_dim, **proj)
        self.out = nnx.Linear(embed_dim, embed_dim, rngs=rngs,
                              kernel_init=nnx.initializers.normal(out_init_std))
        self.dropout = nnx.Dropout(dropout_rate)

    def __call__(
        self,
        x_BTD: jax.Array,
        *,
        mask: jax.Array,
        cache: LayerKV | None,
        cache_length: jax.Array | None,
        rngs: nnx.Rngs | None,
    ) -> tuple[jax.Array, LayerKV | None]:
        """Returns (out [B, T, D], updated cache).

        mask: bool broadcastable to [B, N, T, S]; S = T without a cache, S = the
        cache's slots with one (new keys are written at `cache_length`).
        """
        B, T, _ = x_BTD.shape
        heads = (B, T, self.num_heads, self.head_dim)
        q_BTNH = self.query(x_BTD).reshape(heads)
        k_BTNH = self.key(x_BTD).reshape(heads)
        v_BTNH = self.value(x_BTD).reshape(heads)
        if cache is not None:
            cache = write_kv(cache, cache_length, k_BTNH, v_BTNH)
            k_BSNH, v_BSNH = cache.key_BSKH, cache.value_BSKH
        else:
            k_BSNH, v_BSNH = k_BTNH, v_BTNH
        out_BTNH = dot_product_attention(q_BTNH, k_BSNH, v_BSNH, mask=mask)
        out_BTD = self.out(out_BTNH.reshape(B, T, -1))
        return self.dropout(out_BTD, deterministic=rngs is None, rngs=rngs), cache


class MLP(nnx.Module):
    """Position-wise feedforward: D -> F -> GELU (tanh form, as GPT-2) -> D."""

    def __init__(self, *, embed_dim: int, mlp_dim: int, dropout_rate: float,
                 out_init_std: float, rngs: nnx.Rngs):
        self.fc = nnx.Linear(embed_dim, mlp_dim, kernel_init=default_init, rngs=rngs)
        self.proj = nnx.Linear(mlp_dim, embed_dim, rngs=rngs,
                               kernel_init=nnx.initializers.normal(out_init_std))
        self.dropout = nnx.Dropout(dropout_rate)

    def __call__(self, x_BTD: jax.Array, *, rngs: nnx.Rngs | None) -> jax.Array:
        h_BTF = gelu_tanh(self.fc(x_BTD))
        return self.dropout(self.proj(h_BTF), deterministic=rngs is None, rngs=rngs)


class DecoderBlock(nnx.Module):
    """Pre-norm block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, *, embed_dim: int, num_heads: int, mlp_dim: int,
                 dropout_rate: float, layer_norm_epsilon: float, num_layers: int,
                 rngs: nnx.Rngs):
        # GPT-2 scales the init of projections into the residual stream by
        # 1/sqrt(2 * layers) so the stream's variance does not grow with depth.
        out_init_std = 0.02 / (2 * num_layers) ** 0.5
        self.attn_norm = LayerNorm(embed_dim, epsilon=layer_norm_epsilon)
        self.attn = MultiHeadAttention(embed_dim=embed_dim, num_heads=num_heads,
                                       dropout_rate=dropout_rate,
                                       out_init_std=out_init_std, rngs=rngs)
        self.mlp_norm = LayerNorm(embed_dim, epsilon=layer_norm_epsilon)
        self.mlp = MLP(embed_dim=embed_dim, mlp_dim=mlp_dim, dropout_rate=dropout_rate,
                       out_init_std=out_init_std, rngs=rngs)

    def __call__(self, x_BTD, *, mask, cache, cache_length, rngs):
        attn_BTD, cache = self.attn(self.attn_norm(x_BTD), mask=mask, cache=cache,
                                    cache_length=cache_length, rngs=rngs)
        x_BTD = x_BTD + attn_BTD
        x_BTD = x_BTD + self.mlp(self.mlp_norm(x_BTD), rngs=rngs)
        return x_BTD, cache
