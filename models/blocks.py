"""One transformer block for every family, in Flax NNX; the math lives in flaxzoo.layers.

Dimension key: B batch, T query length, S key/value length (cache slots, or the
encoder length for cross-attention), D model width, N query heads, K key/value
heads, H head dim (need not be D / N), F feedforward width.

A `Block` is self-attention, optional cross-attention and a feedforward, each a
residual branch with dropout, normalised before (pre-norm, GPT-2, T5) or after
(post-norm, BERT and the original Transformer) the residual sum. `BlockConfig`
chooses the norm (LayerNorm or RMSNorm), biases, the activation and gating, grouped
key/value heads, the head dim, the attention scale and whether queries and keys are
rotated (RoPE). Positions that act through an additive bias (ALiBi, T5 relative
bias) and masks are built once at the model's top and passed down.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from flaxzoo.layers import (
    ACTIVATIONS,
    RopeScaling,
    apply_rope,
    dot_product_attention,
    geglu,
    get_activation,
    layer_norm,
    rms_norm,
    swiglu,
)
from flaxzoo.models.cache import LayerKV, write_kv
from flaxzoo.models.config import check_positive_ints

# GPT-2's initialisation: N(0, 0.02) for weights and embeddings.
default_init = nnx.initializers.normal(stddev=0.02)

NORMS = ("layer_norm", "rms_norm")
ROPE_LAYOUTS = ("half", "interleaved")
# Gated feedforwards whose gate function flaxzoo.layers provides.
_GATED = {"gelu": "geglu", "gelu_tanh": "geglu", "silu": "swiglu"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class RotaryConfig:
    """Rotary position embeddings applied to queries and keys (see `layers.apply_rope`)."""

    base: float = 10_000.0
    """The 10000 of the RoPE paper."""
    layout: str = "half"
    """"half" (GPT-NeoX, Llama) or "interleaved" (GPT-J) channel pairing."""
    rotary_dim: int | None = None
    """Rotate only the first rotary_dim channels of each head; None rotates all."""
    scaling: RopeScaling | None = None
    """Context-length scaling (linear or NTK), or None."""

    def __post_init__(self):
        if not self.base > 0:
            raise ValueError(f"RotaryConfig.base must be > 0; got {self.base}")
        if self.layout not in ROPE_LAYOUTS:
            raise ValueError(f"RotaryConfig.layout must be one of {ROPE_LAYOUTS}; "
                             f"got {self.layout!r}")
        if self.rotary_dim is not None and (self.rotary_dim < 2 or self.rotary_dim % 2):
            raise ValueError(f"RotaryConfig.rotary_dim must be even and >= 2; "
                             f"got {self.rotary_dim}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockConfig:
    """Everything that shapes one block; validated on construction."""

    embed_dim: int
    """D, the residual stream width."""
    num_heads: int
    """N, query heads."""
    mlp_dim: int
    """F, feedforward hidden width."""
    num_kv_heads: int | None = None
    """K, key/value heads (grouped-query when 1 < K < N); None means K = N."""
    head_dim: int | None = None
    """H; None means D / N (then D must be divisible by N)."""
    norm: str = "layer_norm"
    """"layer_norm" or "rms_norm"."""
    norm_epsilon: float = 1e-5
    pre_norm: bool = True
    """True: x + f(norm(x)); False (post-norm): norm(x + f(x))."""
    use_bias: bool = True
    """Biases on the dense layers and, for LayerNorm, on the norms."""
    activation: str = "gelu_tanh"
    """A name in `layers.ACTIVATIONS`."""
    gated_mlp: bool = False
    """act(x W_gate) * (x W_up) then W_down (GEGLU for GELU, SwiGLU for SiLU)."""
    dropout_rate: float = 0.0
    """Dropout on every residual branch while training."""
    attention_dropout_rate: float = 0.0
    """Dropout on the attention weights while training."""
    attention_scale: float | None = None
    """Multiplies q.k; None means 1/sqrt(H). T5 folds the scale into its init: 1.0."""
    rotary: RotaryConfig | None = None
    """Rotate queries and keys of self-attention at their positions (RoPE)."""
    cross_attention: bool = False
    """Add a cross-attention sublayer that reads an encoder's output."""

    def __post_init__(self):
        check_positive_ints(self, "embed_dim", "num_heads", "mlp_dim")
        check_positive_ints(self, *(name for name in ("num_kv_heads", "head_dim")
                                    if getattr(self, name) is not None))
        if self.num_heads % self.kv_heads:
            raise ValueError(f"BlockConfig.num_kv_heads ({self.kv_heads}) must divide "
                             f"num_heads ({self.num_heads})")
        if self.head_dim is None and self.embed_dim % self.num_heads:
            raise ValueError(f"BlockConfig.embed_dim ({self.embed_dim}) must be divisible by "
                             f"num_heads ({self.num_heads}) unless head_dim is given")
        if self.norm not in NORMS:
            raise ValueError(f"BlockConfig.norm must be one of {NORMS}; got {self.norm!r}")
        if not self.norm_epsilon > 0:
            raise ValueError(f"BlockConfig.norm_epsilon must be > 0; got {self.norm_epsilon}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"BlockConfig.activation must be one of {sorted(ACTIVATIONS)}; "
                             f"got {self.activation!r}")
        if self.gated_mlp and self.activation not in _GATED:
            raise ValueError(f"BlockConfig.activation must be one of {sorted(_GATED)} when "
                             f"gated_mlp is on; got {self.activation!r}")
        for name in ("dropout_rate", "attention_dropout_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"BlockConfig.{name} must be in [0, 1); got {getattr(self, name)}")
        if self.attention_scale is not None and not self.attention_scale > 0:
            raise ValueError(f"BlockConfig.attention_scale must be > 0; got {self.attention_scale}")
        if self.rotary is not None:
            rotary_dim = self.rotary.rotary_dim or self.head_size
            if rotary_dim > self.head_size or rotary_dim % 2:
                raise ValueError(f"BlockConfig.rotary.rotary_dim ({rotary_dim}) must be even and "
                                 f"at most the head dim ({self.head_size})")

    @property
    def kv_heads(self) -> int:
        """K, with the default resolved."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads

    @property
    def head_size(self) -> int:
        """H, with the default resolved."""
        return self.embed_dim // self.num_heads if self.head_dim is None else self.head_dim


class LayerNorm(nnx.Module):
    """Learned scale (and bias) around `flaxzoo.layers.layer_norm`."""

    def __init__(self, dim: int, *, epsilon: float = 1e-5, use_bias: bool = True):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((dim,), jnp.float32)) if use_bias else None
        self.epsilon = epsilon

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        bias = None if self.bias is None else self.bias[...]
        return layer_norm(x_BTD, self.scale[...], bias, epsilon=self.epsilon)


class RMSNorm(nnx.Module):
    """Learned scale around `flaxzoo.layers.rms_norm` (T5, Llama)."""

    def __init__(self, dim: int, *, epsilon: float = 1e-6):
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32))
        self.epsilon = epsilon

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        return rms_norm(x_BTD, self.scale[...], epsilon=self.epsilon)


def make_norm(config: BlockConfig) -> LayerNorm | RMSNorm:
    """The norm `config` asks for, over D."""
    if config.norm == "rms_norm":
        return RMSNorm(config.embed_dim, epsilon=config.norm_epsilon)
    return LayerNorm(config.embed_dim, epsilon=config.norm_epsilon, use_bias=config.use_bias)


def _dropout_key(rngs: nnx.Rngs | None, rate: float) -> jax.Array | None:
    return rngs.dropout() if rngs is not None and rate > 0.0 else None


class Attention(nnx.Module):
    """Multi-head attention with K key/value heads: project, attend, merge, project out.

    Self-attention reads keys and values from its own input (and the cache);
    cross-attention reads them from `kv`, computed once from the encoder output
    by `cross_kv`.
    """

    def __init__(self, config: BlockConfig, *, out_init_std: float, rngs: nnx.Rngs):
        self.num_heads, self.num_kv_heads = config.num_heads, config.kv_heads
        self.head_dim = config.head_size
        self.scale = config.attention_scale
        self.dropout_rate = config.attention_dropout_rate
        self.rotary = config.rotary
        D, N, K, H = config.embed_dim, config.num_heads, config.kv_heads, config.head_size
        proj = dict(use_bias=config.use_bias, kernel_init=default_init, rngs=rngs)
        self.query = nnx.Linear(D, N * H, **proj)
        self.key = nnx.Linear(D, K * H, **proj)
        self.value = nnx.Linear(D, K * H, **proj)
        self.out = nnx.Linear(N * H, D, use_bias=config.use_bias, rngs=rngs,
                              kernel_init=nnx.initializers.normal(out_init_std))

    def _heads(self, linear: nnx.Linear, x_BTD: jax.Array, heads: int) -> jax.Array:
        B, T, _ = x_BTD.shape
        return linear(x_BTD).reshape(B, T, heads, self.head_dim)

    def cross_kv(self, encoded_BSD: jax.Array) -> LayerKV:
        """Keys and values of an encoder output (stored [B, K, S, H]); computed once per input."""
        return LayerKV.from_BSKH(self._heads(self.key, encoded_BSD, self.num_kv_heads),
                                 self._heads(self.value, encoded_BSD, self.num_kv_heads))

    def __call__(
        self,
        x_BTD: jax.Array,
        *,
        mask: jax.Array | None,
        bias: jax.Array | None = None,
        positions_BT: jax.Array | None = None,
        cache: LayerKV | None = None,
        cache_length: jax.Array | None = None,
        kv: LayerKV | None = None,
        rngs: nnx.Rngs | None = None,
        return_weights: bool = False,
    ) -> tuple[jax.Array, LayerKV | None, jax.Array | None]:
        """Returns (out [B, T, D], updated cache, weights [B, N, T, S] or None).

        mask, bias: broadcastable to [B, N, T, S]; S = T without a cache, the
          cache's slots with one, the encoder length with `kv`.
        positions_BT: int [B, T], needed when the config rotates (RoPE).
        cache, cache_length: self-attention cache; new keys go to slots
          [cache_length, cache_length + T).
        kv: precomputed cross-attention keys/values (then cache must be None).
        """
        q_BTNH = self._heads(self.query, x_BTD, self.num_heads)
        if kv is not None:
            k_BSKH, v_BSKH = kv.key_BSKH, kv.value_BSKH
        else:
            k_BSKH = self._heads(self.key, x_BTD, self.num_kv_heads)
            v_BSKH = self._heads(self.value, x_BTD, self.num_kv_heads)
            if self.rotary is not None:
                if positions_BT is None:
                    raise ValueError("positions_BT is required when attention rotates (RoPE)")
                rope = dict(base=self.rotary.base, layout=self.rotary.layout,
                            rotary_dim=self.rotary.rotary_dim, scaling=self.rotary.scaling)
                q_BTNH = apply_rope(q_BTNH, positions_BT, **rope)
                k_BSKH = apply_rope(k_BSKH, positions_BT, **rope)
            if cache is not None:
                cache = write_kv(cache, cache_length, k_BSKH, v_BSKH)
                # [B, S, K, H] views of the heads-major cache: the attention's own
                # transpose to heads-major cancels them, so no copy of the cache is made.
                k_BSKH, v_BSKH = cache.key_BSKH, cache.value_BSKH
        result = dot_product_attention(
            q_BTNH, k_BSKH, v_BSKH, mask=mask, bias=bias, scale=self.scale,
            dropout_rate=self.dropout_rate if rngs is not None else 0.0,
            dropout_rng=_dropout_key(rngs, self.dropout_rate), return_weights=return_weights,
        )
        out_BTNH, weights_BNTS = result if return_weights else (result, None)
        B, T = x_BTD.shape[:2]
        return self.out(out_BTNH.reshape(B, T, -1)), cache, weights_BNTS


class MLP(nnx.Module):
    """Position-wise feedforward: D -> F -> activation (or gated) -> D."""

    def __init__(self, config: BlockConfig, *, out_init_std: float, rngs: nnx.Rngs):
        D, F = config.embed_dim, config.mlp_dim
        dense = dict(use_bias=config.use_bias, kernel_init=default_init, rngs=rngs)
        self.activation = config.activation
        self.gated = config.gated_mlp
        self.fc = nnx.Linear(D, F, **dense)  # the gate's input when gated
        self.up = nnx.Linear(D, F, **dense) if config.gated_mlp else None
        self.proj = nnx.Linear(F, D, use_bias=config.use_bias, rngs=rngs,
                               kernel_init=nnx.initializers.normal(out_init_std))

    def __call__(self, x_BTD: jax.Array) -> jax.Array:
        if not self.gated:
            return self.proj(get_activation(self.activation)(self.fc(x_BTD)))
        if _GATED[self.activation] == "swiglu":
            h_BTF = swiglu(self.fc(x_BTD), self.up(x_BTD))
        else:
            h_BTF = geglu(self.fc(x_BTD), self.up(x_BTD),
                          approximate=self.activation == "gelu_tanh")
        return self.proj(h_BTF)


@flax.struct.dataclass
class BlockOutput:
    """What a block returns: the new residual stream, caches and optional weights."""

    x_BTD: jax.Array
    cache: LayerKV | None
    self_weights_BNTS: jax.Array | None = None
    cross_weights_BNTS: jax.Array | None = None


class Block(nnx.Module):
    """Self-attention, optional cross-attention and feedforward, each a residual branch.

    pre-norm:  x = x + drop(f(norm(x)))      post-norm:  x = norm(x + drop(f(x)))
    """

    def __init__(self, config: BlockConfig, *, num_layers: int, rngs: nnx.Rngs):
        # GPT-2 scales the init of projections into the residual stream by
        # 1/sqrt(2 * layers) so the stream's variance does not grow with depth.
        out_init_std = 0.02 / (2 * num_layers) ** 0.5
        self.pre_norm = config.pre_norm
        self.attn_norm = make_norm(config)
        self.attn = Attention(config, out_init_std=out_init_std, rngs=rngs)
        if config.cross_attention:
            cross_config = dataclasses.replace(config, rotary=None)
            self.cross_norm = make_norm(config)
            self.cross_attn = Attention(cross_config, out_init_std=out_init_std, rngs=rngs)
        else:
            self.cross_norm = self.cross_attn = None
        self.mlp_norm = make_norm(config)
        self.mlp = MLP(config, out_init_std=out_init_std, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout_rate)

    def _residual(self, x_BTD, norm, branch, rngs):
        """Applies one sublayer; `branch` maps the (normed) input to (out, extras)."""
        out, extras = branch(norm(x_BTD) if self.pre_norm else x_BTD)
        x_BTD = x_BTD + self.dropout(out, deterministic=rngs is None, rngs=rngs)
        return (x_BTD if self.pre_norm else norm(x_BTD)), extras

    def __call__(
        self,
        x_BTD: jax.Array,
        *,
        mask: jax.Array | None,
        bias: jax.Array | None = None,
        positions_BT: jax.Array | None = None,
        cache: LayerKV | None = None,
        cache_length: jax.Array | None = None,
        cross_kv: LayerKV | None = None,
        cross_mask: jax.Array | None = None,
        cross_bias: jax.Array | None = None,
        rngs: nnx.Rngs | None = None,
        return_weights: bool = False,
    ) -> BlockOutput:
        """One block over x [B, T, D].

        mask, bias, positions_BT, cache, cache_length: self-attention, as in
          `Attention`.
        cross_kv: the encoder's keys/values from `self.cross_attn.cross_kv(...)`;
          required exactly when the config has cross-attention.
        cross_mask, cross_bias: broadcastable to [B, N, T, S_encoder].
        rngs: a dropout stream turns dropout on; None is deterministic.
        """
        if (cross_kv is None) != (self.cross_attn is None):
            raise ValueError("cross_kv must be given exactly when the block has cross-attention")

        def self_branch(h_BTD):
            out, new_cache, weights = self.attn(
                h_BTD, mask=mask, bias=bias, positions_BT=positions_BT, cache=cache,
                cache_length=cache_length, rngs=rngs, return_weights=return_weights)
            return out, (new_cache, weights)

        x_BTD, (cache, self_weights) = self._residual(x_BTD, self.attn_norm, self_branch, rngs)
        cross_weights = None
        if self.cross_attn is not None:
            def cross_branch(h_BTD):
                out, _, weights = self.cross_attn(h_BTD, mask=cross_mask, bias=cross_bias,
                                                  kv=cross_kv, rngs=rngs,
                                                  return_weights=return_weights)
                return out, weights

            x_BTD, cross_weights = self._residual(x_BTD, self.cross_norm, cross_branch, rngs)
        x_BTD, _ = self._residual(x_BTD, self.mlp_norm, lambda h: (self.mlp(h), None), rngs)
        return BlockOutput(x_BTD=x_BTD, cache=cache, self_weights_BNTS=self_weights,
                           cross_weights_BNTS=cross_weights)
