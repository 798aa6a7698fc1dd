"""A GPT-shaped decoder-only language model in Flax NNX.

Dimension key: B batch, T query length, S cache slots, D model width,
N heads, H head dim, F feedforward width, V vocabulary, L layers.

Token embeddings, positions (an explicit argument) by the scheme the config
names, pre-norm causal blocks (`models.blocks.Block`), a final norm, and an output
layer tied to the token embedding.

Position schemes (`GPTConfig.position`):
  "learned"     a trained table of max_seq_len rows added to the embeddings (GPT-2);
  "sinusoidal"  the fixed table of `layers.sinusoidal_positions` added instead;
  "rotary"      queries and keys rotated in every layer (`layers.apply_rope`);
  "alibi"       a per-head linear bias on the logits (`layers.alibi_bias`);
  "relative"    T5's learned bias per relative-position bucket and head, one table
                shared by all layers (`layers.relative_position_bias`, causal buckets);
  "none"        no positions at all (the causal mask alone orders tokens).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxzoo.layers import (
    alibi_bias,
    alibi_slopes,
    causal_mask,
    padding_mask,
    relative_position_bias,
    relative_position_bucket,
    sinusoidal_positions,
)
from flaxzoo.models.blocks import (
    ROPE_LAYOUTS,
    Block,
    BlockConfig,
    RotaryConfig,
    default_init,
    make_norm,
)
from flaxzoo.models.cache import KVCache, init_kv_cache, write_slots
from flaxzoo.models.config import StackConfig, check_positive_ints

POSITIONS = ("learned", "sinusoidal", "rotary", "alibi", "relative", "none")


@dataclasses.dataclass(frozen=True, kw_only=True)
class GPTConfig(StackConfig):
    """Shape and regularisation of a GPT model; validated on construction."""

    PRESET_NAMES: ClassVar[tuple[str, ...]] = ("tiny", "demo", "gpt2_small")

    num_kv_heads: int | None = None
    """K, key/value heads (grouped-query attention when 1 < K < N); None means N."""
    head_dim: int | None = None
    """H; None means embed_dim / num_heads."""
    position: str = "learned"
    """The position scheme, one of POSITIONS (see the module docstring)."""
    rope_base: float = 10_000.0
    """Base of the rotary frequencies (position="rotary" only)."""
    rope_layout: str = "half"
    """"half" or "interleaved" channel pairing (position="rotary" only)."""
    relative_num_buckets: int = 32
    """T5 relative-position buckets (position="relative" only)."""
    relative_max_distance: int = 128
    """Distances from here on share the last bucket (position="relative" only)."""
    activation: str = "gelu_tanh"
    """Feedforward activation, a name in `layers.ACTIVATIONS`."""
    gated_mlp: bool = False
    """GEGLU / SwiGLU feedforward instead of the plain one."""
    norm: str = "layer_norm"
    """"layer_norm" or "rms_norm"."""
    use_bias: bool = True
    """Biases on dense layers and LayerNorms."""
    dropout_rate: float = 0.0
    """Dropout on embeddings and residual branches while training."""
    attention_dropout_rate: float = 0.0
    """Dropout on the attention weights while training."""
    layer_norm_epsilon: float = 1e-5

    def __post_init__(self):
        check_positive_ints(self, "vocab_size", "max_seq_len", "num_layers",
                            "relative_num_buckets", "relative_max_distance")
        if self.position not in POSITIONS:
            raise ValueError(f"GPTConfig.position must be one of {POSITIONS}; "
                             f"got {self.position!r}")
        if self.rope_layout not in ROPE_LAYOUTS:
            raise ValueError(f"GPTConfig.rope_layout must be one of {ROPE_LAYOUTS}; "
                             f"got {self.rope_layout!r}")
        if self.position == "relative":
            try:  # the bucket options' own checks, under this config's name
                relative_position_bucket(np.zeros((), np.int32), bidirectional=False,
                                         num_buckets=self.relative_num_buckets,
                                         max_distance=self.relative_max_distance)
            except ValueError as error:
                raise ValueError(f"GPTConfig.relative_{error}") from None
        if self.position == "sinusoidal" and self.embed_dim % 2:
            raise ValueError(f"GPTConfig.embed_dim must be even for sinusoidal positions; "
                             f"got {self.embed_dim}")
        try:
            self.block_config()
        except ValueError as error:  # the block's checks, under this config's name
            raise ValueError(str(error).replace("BlockConfig.", "GPTConfig.")
                             .replace("norm_epsilon", "layer_norm_epsilon")) from None

    def block_config(self) -> BlockConfig:
        """The BlockConfig every layer of this model is built from."""
        rotary = None
        if self.position == "rotary":
            rotary = RotaryConfig(base=self.rope_base, layout=self.rope_layout)
        return BlockConfig(
            embed_dim=self.embed_dim, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, norm=self.norm,
            norm_epsilon=self.layer_norm_epsilon, pre_norm=True, use_bias=self.use_bias,
            activation=self.activation, gated_mlp=self.gated_mlp,
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate, rotary=rotary,
        )

    @property
    def kv_heads(self) -> int:
        """K, with the default resolved (as the blocks resolve it)."""
        return self.block_config().kv_heads

    @property
    def head_size(self) -> int:
        """H, with the default resolved (as the blocks resolve it)."""
        return self.block_config().head_size

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


PRESETS = GPTConfig.PRESET_NAMES


def init_cache(config: GPTConfig, batch_size: int, max_len: int,
               dtype: jnp.dtype = jnp.float32) -> KVCache:
    """An empty KV cache for `max_len` tokens (at most config.max_seq_len)."""
    if max_len > config.max_seq_len:
        raise ValueError(
            f"max_len ({max_len}) exceeds the model's max_seq_len ({config.max_seq_len})")
    return init_kv_cache(num_layers=config.num_layers, batch_size=batch_size,
                         max_len=max_len, num_kv_heads=config.kv_heads,
                         head_dim=config.head_size, dtype=dtype)


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
        if config.position == "learned":
            self.position_embed = nnx.Param(
                default_init(rngs.params(), (config.max_seq_len, config.embed_dim)))
        else:
            self.position_embed = None
        self.relative_bias = (nnx.Param(default_init(
            rngs.params(), (config.relative_num_buckets, config.num_heads)))
            if config.position == "relative" else None)
        self.embed_dropout = nnx.Dropout(config.dropout_rate)
        block_config = config.block_config()
        self.blocks = nnx.List([Block(block_config, num_layers=config.num_layers, rngs=rngs)
                                for _ in range(config.num_layers)])
        self.final_norm = make_norm(block_config)

    def _embed(self, tokens_BT, positions_BT, rngs):
        config = self.config
        x_BTD = self.token_embed(tokens_BT)
        if config.position == "learned":
            table = self.position_embed[...]
            x_BTD = x_BTD + table[jnp.clip(positions_BT, 0, config.max_seq_len - 1)]
        elif config.position == "sinusoidal":
            x_BTD = x_BTD + sinusoidal_positions(positions_BT, config.embed_dim).astype(x_BTD.dtype)
        return self.embed_dropout(x_BTD, deterministic=rngs is None, rngs=rngs)

    def __call__(
        self,
        tokens_BT: jax.Array,
        positions_BT: jax.Array,
        *,
        cache: KVCache | None = None,
        valid_BT: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
        return_weights: bool = False,
    ) -> tuple[jax.Array, KVCache | None] | tuple[jax.Array, KVCache | None, jax.Array]:
        """Logits for every position, and the cache with these tokens appended.

        Args:
          tokens_BT: int [B, T].
          positions_BT: int [B, T], each in [0, max_seq_len).
          cache: None for a plain forward pass over the whole sequence; else a
            KVCache whose first `cache.length` slots hold earlier tokens. A prompt
            is prefilled in one call, then tokens are appended one at a time.
          valid_BT: bool [B, T], False for padding tokens, which no token attends
            to (also later, through the cache); default all True. With left
            padding, give the real tokens positions 0, 1, ... so every scheme sees
            each row as if it were alone.
          dropout_rng: a PRNG key turns dropout on (training); None is
            deterministic (evaluation and decoding).
          return_weights: also return every layer's attention weights.

        Returns:
          (logits [B, T, V] float32, updated cache or None), and with
          `return_weights` a third item, float32 [L, B, N, T, S] (S = T without a
          cache, the cache's slots with one).

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

        in_range_BT = (positions_BT >= 0) & (positions_BT < config.max_seq_len)
        x_BTD = self._embed(tokens_BT, positions_BT, rngs)
        if valid_BT is None:
            valid_BT = jnp.ones(tokens_BT.shape, jnp.bool_)
        elif jnp.shape(valid_BT) != tokens_BT.shape:
            raise ValueError(f"valid must have the shape of tokens {tokens_BT.shape}; "
                             f"got {jnp.shape(valid_BT)}")
        valid_BT = jnp.asarray(valid_BT, jnp.bool_)
        if cache is None:
            key_positions_BS, key_valid_BS = positions_BT, valid_BT
            mask_BNTS = causal_mask(T) & padding_mask(key_valid_BS)
            cache_length = None
            layer_caches = (None,) * config.num_layers
        else:
            # New queries sit at slots [length, length + T); the causal mask with
            # that offset also hides the empty slots after them.
            key_positions_BS, key_valid_BS = write_slots(cache, positions_BT, valid_BT)
            mask_BNTS = (causal_mask(T, cache.max_len, offset=cache.length)
                         & padding_mask(key_valid_BS))
            cache_length = cache.length
            layer_caches = cache.layers
            in_range_BT = in_range_BT & (cache.length + T <= cache.max_len)
        bias_BNTS = None
        if config.position == "alibi":
            bias_BNTS = alibi_bias(alibi_slopes(config.num_heads), positions_BT, key_positions_BS)
        elif config.position == "relative":
            bias_BNTS = relative_position_bias(
                self.relative_bias[...], positions_BT, key_positions_BS, bidirectional=False,
                num_buckets=config.relative_num_buckets,
                max_distance=config.relative_max_distance)

        new_layers, weights = [], []
        for block, layer_cache in zip(self.blocks, layer_caches):
            out = block(x_BTD, mask=mask_BNTS, bias=bias_BNTS, positions_BT=positions_BT,
                        cache=layer_cache, cache_length=cache_length, rngs=rngs,
                        return_weights=return_weights)
            x_BTD = out.x_BTD
            new_layers.append(out.cache)
            weights.append(out.self_weights_BNTS)

        x_BTD = self.final_norm(x_BTD)
        logits_BTV = self.token_embed.attend(x_BTD).astype(jnp.float32)
        logits_BTV = jnp.where(in_range_BT[..., None], logits_BTV, jnp.nan)
        if cache is not None:
            cache = KVCache(layers=tuple(new_layers), length=cache.length + T,
                            positions_BS=key_positions_BS, valid_BS=key_valid_BS)
        if return_weights:
            return logits_BTV, cache, jnp.stack(weights)
        return logits_BTV, cache

    def decode_step(self, tokens_BT: jax.Array, cache: KVCache, positions_BT: jax.Array,
                    context: None = None) -> tuple[jax.Array, KVCache]:
        """The `flaxzoo.decoding` step function: `(logits [B, T, V], cache)`.

        A token at a negative position is padding (`decoding.PAD_POSITION`): it is
        written to the cache but no token ever attends to it. `context` is unused.
        """
        del context
        positions_BT = jnp.asarray(positions_BT)
        return self(tokens_BT, jnp.maximum(positions_BT, 0), cache=cache,
                    valid_BT=positions_BT >= 0)
