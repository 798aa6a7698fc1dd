"""A GPT-shaped decoder-only language model in Flax NNX.

Dimension key: B batch, T query length, S cache slots, D model width,
N heads, H head dim, F feedforward width, V vocabulary, L layers.

Token embeddings plus learned position embeddings (positions are an explicit
argument), pre-norm decoder blocks, a final LayerNorm, and an output layer tied
to the token embedding.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from flaxzoo.layers import causal_mask
from flaxzoo.models.blocks import DecoderBlock, LayerNorm, default_init
from flaxzoo.models.cache import KVCache, init_kv_cache


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPTConfig:
    """Shape and regularisation of a GPT model; validated on construction."""

    vocab_size: int
    """V, number of token ids."""
    max_seq_len: int
    """Rows of the learned position table: positions must lie in [0, max_seq_len)."""
    num_layers: int
    """L, number of decoder blocks."""
    num_heads: int
    """N, attention heads per block."""
    embed_dim: int
    """D, model width; must be divisible by num_heads."""
    mlp_dim: int
    """F, feedforward hidden width."""
    dropout_rate: float = 0.0
    """Dropout on embeddings and residual branches while training."""
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        for name in ("vocab_size", "max_seq_len", "num_layers", "num_heads",
                     "embed_dim", "mlp_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int; got {value!r}")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"GPTConfig.embed_dim ({self.embed_dim}) must be divisible by "
                f"num_heads ({self.num_heads})")
        if not 0.0 <= self.dropout_rate < 1.0:
            raise ValueError(f"GPTConfig.dropout_rate must be in [0, 1); got {self.dropout_rate}")
        if not self.layer_norm_epsilon > 0:
            raise ValueError(
                f"GPTConfig.layer_norm_epsilon must be > 0; got {self.layer_norm_epsilon}")

    @property
    def head_dim(self) -> int:
        """H = D / N."""
        return self.embed_dim // self.num_heads

    # Named sizes. vocab_size comes from the tokenizer, so every preset takes it.
    @classmethod
    def tiny(cls, *, vocab_size: int = 32, **overrides) -> GPTConfig:
        """For tests: D=16, N=4, L=2."""
        return cls(**{**dict(vocab_size=vocab_size, max_seq_len=16, num_layers=2,
                             num_heads=4, embed_dim=16, mlp_dim=64), **overrides})

    @classmethod
    def demo(cls, *, vocab_size: int = 128, **overrides) -> GPTConfig:
        """For `make demo`: a character model that trains in minutes on 2 CPU cores."""
        return cls(**{**dict(vocab_size=vocab_size, max_seq_len=128, num_layers=4,
                             num_heads=4, embed_dim=128, mlp_dim=512), **overrides})

    @classmethod
    def gpt2_small(cls, *, vocab_size: int = 50257, **overrides) -> GPTConfig:
        """The GPT-2 small shape (124M parameters with its 50257-token vocabulary)."""
        return cls(**{**dict(vocab_size=vocab_size, max_seq_len=1024, num_layers=12,
                             num_heads=12, embed_dim=768, mlp_dim=3072, dropout_rate=0.1),
                      **overrides})

    @classmethod
    def preset(cls, name: str, **overrides) -> GPTConfig:
        """A named preset (see PRESETS) with fields overridden."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return getattr(cls, name)(**overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown GPTConfig fields: {sorted(unknown)}")
        return cls(**values)


PRESETS = ("tiny", "demo", "gpt2_small")


def init_cache(config: GPTConfig, batch_size: int, max_len: int,
               dtype: jnp.dtype = jnp.float32) -> KVCache:
    """An empty KV cache for `max_len` tokens (at most config.max_seq_len)."""
    if max_len > config.max_seq_len:
        raise ValueError(
            f"max_len ({max_len}) exceeds the model's max_seq_len ({config.max_seq_len})")
    return init_kv_cache(num_layers=config.num_layers, batch_size=batch_size,
                         max_len=max_len, num_kv_heads=config.num_heads,
                         head_dim=config.head_dim, dtype=dtype)


def _check_inputs(config: GPTConfig, tokens_BT, positions_BT, cache) -> None:
    """Shape checks (always) and value checks (when values are concrete)."""
    if tokens_BT.ndim != 2:
        raise ValueError(f"tokens must have shape [batch, length]; got {tokens_BT.shape}")
    if positions_BT.shape != tokens_BT.shape:
        raise ValueError(
            f"positions must have the shape of tokens {tokens_BT.shape}; got {positions_BT.shape}")
    if not jnp.issubdtype(tokens_BT.dtype, jnp.integer):
        raise ValueError(f"tokens must be integers; got dtype {tokens_BT.dtype}")
    if not jnp.issubdtype(positions_BT.dtype, jnp.integer):
        raise ValueError(f"positions must be integers; got dtype {positions_BT.dtype}")
    T = tokens_BT.shape[1]
    limit = config.max_seq_len if cache is None else cache.max_len
    if T > limit:
        raise ValueError(f"{T} tokens do not fit: at most {limit} "
                         f"({'max_seq_len' if cache is None else 'cache slots'})")
    if cache is not None and cache.batch_size != tokens_BT.shape[0]:
        raise ValueError(f"cache batch size {cache.batch_size} != tokens batch size "
                         f"{tokens_BT.shape[0]}")
    if not isinstance(positions_BT, jax.core.Tracer) and positions_BT.size:
        low, high = int(positions_BT.min()), int(positions_BT.max())
        if low < 0 or high >= config.max_seq_len:
            raise ValueError(f"positions must lie in [0, {config.max_seq_len}) (max_seq_len); "
                             f"got values from {low} to {high}")
    if cache is not None and not isinstance(cache.length, jax.core.Tracer):
        if int(cache.length) + T > cache.max_len:
            raise ValueError(f"cache overflow: {int(cache.length)} filled + {T} new tokens > "
                             f"{cache.max_len} slots")


class GPT(nnx.Module):
    """Decoder-only transformer language model."""

    def __init__(self, config: GPTConfig, *, rngs: nnx.Rngs):
        self.config = config
        self.token_embed = nnx.Embed(config.vocab_size, config.embed_dim,
                                     embedding_init=default_init, rngs=rngs)
        self.position_embed = nnx.Param(
            default_init(rngs.params(), (config.max_seq_len, config.embed_dim)))
        self.embed_dropout = nnx.Dropout(config.dropout_rate)
        self.blocks = nnx.List([
            DecoderBlock(embed_dim=config.embed_dim, num_heads=config.num_heads,
                         mlp_dim=config.mlp_dim, dropout_rate=config.dropout_rate,
                         layer_norm_epsilon=config.layer_norm_epsilon,
                         num_layers=config.num_layers, rngs=rngs)
            for _ in range(config.num_layers)
        ])
        self.final_norm = LayerNorm(config.embed_dim, epsilon=config.layer_norm_epsilon)

    def __call__(
        self,
        tokens_BT: jax.Array,
        positions_BT: jax.Array,
        *,
        cache: KVCache | None = None,
        dropout_rng: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Logits for every position, and the cache with these tokens appended.

        Args:
          tokens_BT: int [B, T].
          positions_BT: int [B, T], each in [0, max_seq_len).
          cache: None for a plain forward pass over the whole sequence; else a
            KVCache whose first `cache.length` slots hold earlier tokens. A prompt
            is prefilled in one call, then tokens are appended one at a time.
          dropout_rng: a PRNG key turns dropout on (training); None is
            deterministic (evaluation and decoding).

        Returns:
          (logits [B, T, V] float32, updated cache or None).

        Out-of-range positions or a cache overflow raise ValueError when the
        values are concrete; under jit they make the logits NaN rather than read
        a wrong row or overwrite a wrong slot.
        """
        tokens_BT = jnp.asarray(tokens_BT)
        positions_BT = jnp.asarray(positions_BT)
        config = self.config
        _check_inputs(config, tokens_BT, positions_BT, cache)
        T = tokens_BT.shape[1]
        rngs = None if dropout_rng is None else nnx.Rngs(dropout=dropout_rng)

        valid_BT = (positions_BT >= 0) & (positions_BT < config.max_seq_len)
        pos_BTD = self.position_embed[...][jnp.clip(positions_BT, 0, config.max_seq_len - 1)]
        x_BTD = self.token_embed(tokens_BT) + pos_BTD
        x_BTD = self.embed_dropout(x_BTD, deterministic=rngs is None, rngs=rngs)

        if cache is None:
            mask_TS = causal_mask(T)
            cache_length = None
            layer_caches = (None,) * config.num_layers
        else:
            # New queries sit at slots [length, length + T); the causal mask with
            # that offset also hides the empty slots after them.
            mask_TS = causal_mask(T, cache.max_len, offset=cache.length)
            cache_length = cache.length
            layer_caches = cache.layers
            valid_BT = valid_BT & (cache.length + T <= cache.max_len)

        new_layers = []
        for block, layer_cache in zip(self.blocks, layer_caches):
            x_BTD, layer_cache = block(x_BTD, mask=mask_TS, cache=layer_cache,
                                       cache_length=cache_length, rngs=rngs)
            new_layers.append(layer_cache)

        x_BTD = self.final_norm(x_BTD)
        logits_BTV = self.token_embed.attend(x_BTD).astype(jnp.float32)
        logits_BTV = jnp.where(valid_BT[..., None], logits_BTV, jnp.nan)
        if cache is not None:
            cache = KVCache(layers=tuple(new_layers), length=cache.length + T)
        return logits_BTV, cache
