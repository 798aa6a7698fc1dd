"""A T5-shaped encoder-decoder in Flax NNX, with `encode` and `decode` as separate entry points.

Dimension key: B batch, S encoder (input) length, T decoder length, D model width,
N heads, H head dim (T5's d_kv), F feedforward width, V vocabulary, R relative-position
buckets, L layers.

T5 (Raffel et al. 2020): one token embedding shared by both stacks; RMSNorm pre-norm
blocks without dense biases; relative-position bias (one bucket table per stack,
bidirectional in the encoder, causal in the decoder) added to the logits of every
layer's self-attention; no 1/sqrt(H) scale (T5 folds it into the initialisation);
ReLU (v1.0) or gated-GELU (v1.1) feedforwards; a final norm per stack; an output
layer tied to the embedding (then the decoder output is scaled by D**-0.5, v1.0) or
separate (v1.1). Cross-attention keys and values are computed once from the encoder
output (`init_decode_cache`) and reused at every decoding step.

The original "Attention is all you need" Transformer is a config of the same code:
post-norm LayerNorm with biases, sinusoidal positions added to embeddings scaled by
sqrt(D), 1/sqrt(H) attention, ReLU, tied output (`T5Config.attention_is_all_you_need`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from flaxzoo.layers import causal_mask, padding_mask, relative_position_bias, sinusoidal_positions
from flaxzoo.models.blocks import Block, BlockConfig, default_init, make_norm
from flaxzoo.models.cache import KVCache, LayerKV, init_kv_cache, write_slots
from flaxzoo.models.config import StackConfig, check_positive_ints

T5_POSITIONS = ("relative", "sinusoidal")


@dataclasses.dataclass(frozen=True, kw_only=True)
class T5Config(StackConfig):
    """Shape of a T5-style encoder-decoder; validated on construction.

    `num_layers` counts encoder blocks; `max_seq_len` is the longest input or
    target the model accepts (relative positions themselves have no limit).
    """

    PRESET_NAMES: ClassVar[tuple[str, ...]] = ("tiny", "t5_small", "t5_v1_1_small",
                                               "attention_is_all_you_need")

    num_decoder_layers: int | None = None
    """Decoder blocks; None means num_layers."""
    head_dim: int | None = None
    """H (T5's d_kv); None means embed_dim / num_heads."""
    position: str = "relative"
    """"relative" (T5 bias) or "sinusoidal" (added to the embeddings)."""
    relative_num_buckets: int = 32
    relative_max_distance: int = 128
    activation: str = "relu"
    gated_mlp: bool = False
    """T5 v1.1's gated-GELU is activation="gelu_tanh", gated_mlp=True."""
    norm: str = "rms_norm"
    pre_norm: bool = True
    use_bias: bool = False
    attention_scale: float | None = 1.0
    """1.0 for T5; None for 1/sqrt(H)."""
    tie_word_embeddings: bool = True
    scale_tied_logits: bool = True
    """With tied embeddings, scale the decoder output by D**-0.5 before the projection (T5)."""
    scale_input_embeddings: bool = False
    """Multiply input embeddings by sqrt(D) (the original Transformer)."""
    dropout_rate: float = 0.1
    layer_norm_epsilon: float = 1e-6
    pad_id: int = 0
    decoder_start_id: int = 0
    """The token that starts every decoder input (T5 uses the pad id)."""
    initialisation: str = "t5"
    """"t5": T5's scheme, which stands in for the missing 1/sqrt(H) (queries
    N(0, (D H)^-1), keys, values and feedforward inputs N(0, 1/D), outputs
    N(0, 1/(N H)) and N(0, 1/F), relative bias N(0, 1/D), embeddings N(0, 1));
    "normal": N(0, 0.02) everywhere (with 1/sqrt(H) attention, as the original
    Transformer preset uses)."""

    def __post_init__(self):
        check_positive_ints(self, "vocab_size", "max_seq_len", "num_layers",
                            "relative_num_buckets", "relative_max_distance")
        if self.num_decoder_layers is not None:
            check_positive_ints(self, "num_decoder_layers")
        if self.initialisation not in ("t5", "normal"):
            raise ValueError(f"T5Config.initialisation must be 't5' or 'normal'; "
                             f"got {self.initialisation!r}")
        if self.position not in T5_POSITIONS:
            raise ValueError(f"T5Config.position must be one of {T5_POSITIONS}; "
                             f"got {self.position!r}")
        if self.position == "sinusoidal" and self.embed_dim % 2:
            raise ValueError(f"T5Config.embed_dim must be even for sinusoidal positions; "
                             f"got {self.embed_dim}")
        for name in ("pad_id", "decoder_start_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ValueError(f"T5Config.{name} must lie in [0, vocab_size); "
                                 f"got {getattr(self, name)}")
        try:
            self.block_config(cross_attention=True)
        except ValueError as error:
            raise ValueError(str(error).replace("BlockConfig.", "T5Config.")
                             .replace("norm_epsilon", "layer_norm_epsilon")) from None

    @property
    def decoder_layers(self) -> int:
        return self.num_layers if self.num_decoder_layers is None else self.num_decoder_layers

    def block_config(self, *, cross_attention: bool) -> BlockConfig:
        """The BlockConfig of an encoder (False) or decoder (True) block."""
        return BlockConfig(
            embed_dim=self.embed_dim, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            head_dim=self.head_dim, norm=self.norm, norm_epsilon=self.layer_norm_epsilon,
            pre_norm=self.pre_norm, use_bias=self.use_bias, activation=self.activation,
            gated_mlp=self.gated_mlp, dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.dropout_rate, attention_scale=self.attention_scale,
            cross_attention=cross_attention,
        )

    @classmethod
    def tiny(cls, *, vocab_size: int = 32, **overrides) -> T5Config:
        """For tests: D=16, N=4, H=4, two blocks per stack."""
        return cls(**{**dict(vocab_size=vocab_size, max_seq_len=16, num_layers=2, num_heads=4,
                             embed_dim=16, mlp_dim=32, relative_num_buckets=8,
                             relative_max_distance=16, dropout_rate=0.0), **overrides})

    @classmethod
    def t5_small(cls, *, vocab_size: int = 32128, **overrides) -> T5Config:
        """T5 v1.0 small: 6 + 6 layers, d_model 512, 8 heads of 64, d_ff 2048, ReLU, tied."""
        return cls(**{**dict(vocab_size=vocab_size, max_seq_len=512, num_layers=6,
                             num_heads=8, embed_dim=512, mlp_dim=2048), **overrides})

    @classmethod
    def t5_v1_1_small(cls, *, vocab_size: int = 32128, **overrides) -> T5Config:
        """T5 v1.1 small: 8 + 8 layers, d_model 512, 6 heads of 64, d_ff 1024, gated GELU."""
        return cls(**{**dict(vocab_size=vocab_size, max_seq_len=512, num_layers=8,
                             num_heads=6, head_dim=64, embed_dim=512, mlp_dim=1024,
                             activation="gelu_tanh", gated_mlp=True,
                             tie_word_embeddings=False), **overrides})

    @classmethod
    def attention_is_all_you_need(cls, *, vocab_size: int = 37000, **overrides) -> T5Config:
        """The base Transformer of Vaswani et al. (2017)."""
        return cls(**{**dict(vocab_size=vocab_size, max_seq_len=512, num_layers=6,
                             num_heads=8, embed_dim=512, mlp_dim=2048, position="sinusoidal",
                             norm="layer_norm", pre_norm=False, use_bias=True,
                             attention_scale=None, scale_tied_logits=False,
                             scale_input_embeddings=True, layer_norm_epsilon=1e-5,
                             initialisation="normal"),
                      **overrides})


@flax.struct.dataclass
class EncoderOutput:
    """What the decoder reads: encoded [B, S, D] and which inputs are real, bool [B, S]."""

    encoded_BSD: jax.Array
    valid_BS: jax.Array


@flax.struct.dataclass
class DecodeCache:
    """Decoder state for generation: self-attention KV cache, the cross-attention keys
    and values of every decoder layer (computed once), and the encoder padding."""

    self_cache: KVCache
    cross_kv: tuple[LayerKV, ...]
    encoder_valid_BS: jax.Array


@flax.struct.dataclass
class EncoderContext:
    """What every decoding step reads from the encoder: each decoder layer's
    cross-attention keys and values ([B, S, N, H] each, computed once) and which
    inputs are real, bool [B, S]. The `context` of `T5.decode_step`; every leaf leads
    with the batch, so beam search can tile it."""

    cross_kv: tuple[LayerKV, ...]
    encoder_valid_BS: jax.Array


class T5Stack(nnx.Module):
    """An encoder (bidirectional) or decoder (causal, cross-attending) stack of Blocks."""

    def __init__(self, config: T5Config, *, decoder: bool, rngs: nnx.Rngs):
        self.config, self.decoder = config, decoder
        num_layers = config.decoder_layers if decoder else config.num_layers
        block_config = config.block_config(cross_attention=decoder)
        self.blocks = nnx.List([Block(block_config, num_layers=num_layers, rngs=rngs)
                                for _ in range(num_layers)])
        self.relative_bias = (nnx.Param(default_init(
            rngs.params(), (config.relative_num_buckets, config.num_heads)))
            if config.position == "relative" else None)
        self.final_norm = make_norm(block_config) if config.pre_norm else None
        self.dropout = nnx.Dropout(config.dropout_rate)

    def position_bias(self, query_positions_BT, key_positions_BS):
        """[B, N, T, S] relative bias, or None for sinusoidal positions."""
        if self.relative_bias is None:
            return None
        return relative_position_bias(
            self.relative_bias[...], query_positions_BT, key_positions_BS,
            bidirectional=not self.decoder, num_buckets=self.config.relative_num_buckets,
            max_distance=self.config.relative_max_distance)

    def __call__(self, x_BTD, *, mask, bias, positions_BT=None, caches=None, cache_length=None,
                 cross_kv=None, cross_mask=None, rngs=None, return_weights=False):
        """Runs every block; returns (x [B, T, D], new layer caches, self weights, cross weights)."""
        caches = caches if caches is not None else (None,) * len(self.blocks)
        cross_kv = cross_kv if cross_kv is not None else (None,) * len(self.blocks)
        new_caches, self_weights, cross_weights = [], [], []
        for block, cache, kv in zip(self.blocks, caches, cross_kv):
            out = block(x_BTD, mask=mask, bias=bias, positions_BT=positions_BT, cache=cache,
                        cache_length=cache_length, cross_kv=kv, cross_mask=cross_mask,
                        rngs=rngs, return_weights=return_weights)
            x_BTD = out.x_BTD
            new_caches.append(out.cache)
            self_weights.append(out.self_weights_BNTS)
            cross_weights.append(out.cross_weights_BNTS)
        if self.final_norm is not None:
            x_BTD = self.final_norm(x_BTD)
        x_BTD = self.dropout(x_BTD, deterministic=rngs is None, rngs=rngs)
        stack = (lambda ws: jnp.stack(ws)) if return_weights else (lambda ws: None)
        return x_BTD, tuple(new_caches), stack(self_weights), stack(cross_weights)


def _t5_initialise(model: T5, rngs: nnx.Rngs) -> None:
    """Redraws the weights with T5's scheme (see `T5Config.initialisation`)."""
    config = model.config
    D, N, F = config.embed_dim, config.num_heads, config.mlp_dim
    H = config.block_config(cross_attention=True).head_size

    def draw(param: nnx.Param, std: float) -> None:
        param[...] = std * jax.random.normal(rngs.params(), param.shape, param[...].dtype)

    for stack in (model.encoder, model.decoder):
        if stack.relative_bias is not None:
            draw(stack.relative_bias, D ** -0.5)
        for block in stack.blocks:
            for attn in (block.attn, block.cross_attn):
                if attn is not None:
                    draw(attn.query.kernel, (D * H) ** -0.5)
                    draw(attn.key.kernel, D ** -0.5)
                    draw(attn.value.kernel, D ** -0.5)
                    draw(attn.out.kernel, (N * H) ** -0.5)
            for dense in (block.mlp.fc, block.mlp.up):
                if dense is not None:
                    draw(dense.kernel, D ** -0.5)
            draw(block.mlp.proj.kernel, F ** -0.5)
    if model.lm_head is not None:
        draw(model.lm_head.kernel, 1.0)


def _check_tokens(config: T5Config, name: str, tokens, valid, positions=None) -> None:
    if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers of shape [batch, length]; "
                         f"got {tokens.dtype} {tokens.shape}")
    if valid.shape != tokens.shape:
        raise ValueError(f"{name} validity must have shape {tokens.shape}; got {valid.shape}")
    if positions is not None and positions.shape != tokens.shape:
        raise ValueError(f"positions must have the shape of {name} {tokens.shape}; "
                         f"got {positions.shape}")
    if tokens.shape[1] > config.max_seq_len:
        raise ValueError(f"{tokens.shape[1]} {name} do not fit: at most {config.max_seq_len} "
                         f"(max_seq_len)")


class T5(nnx.Module):
    """Encoder-decoder transformer: `encode` once, then `decode` (with or without a cache)."""

    def __init__(self, config: T5Config, *, rngs: nnx.Rngs):
        self.config = config
        # T5 initialises its shared embedding with std 1 (it is rescaled when tied).
        self.token_embed = nnx.Embed(config.vocab_size, config.embed_dim,
                                     embedding_init=nnx.initializers.normal(1.0), rngs=rngs)
        self.encoder = T5Stack(config, decoder=False, rngs=rngs)
        self.decoder = T5Stack(config, decoder=True, rngs=rngs)
        self.lm_head = (None if config.tie_word_embeddings else
                        nnx.Linear(config.embed_dim, config.vocab_size, use_bias=False,
                                   kernel_init=default_init, rngs=rngs))
        self.embed_dropout = nnx.Dropout(config.dropout_rate)
        if config.initialisation == "t5":
            _t5_initialise(self, rngs)

    def _embed(self, tokens_BT, positions_BT, rngs):
        config = self.config
        x_BTD = self.token_embed(tokens_BT)
        if config.scale_input_embeddings:
            x_BTD = x_BTD * math.sqrt(config.embed_dim)
        if config.position == "sinusoidal":
            x_BTD = x_BTD + sinusoidal_positions(positions_BT, config.embed_dim).astype(x_BTD.dtype)
        return self.embed_dropout(x_BTD, deterministic=rngs is None, rngs=rngs)

    def encode(self, tokens_BS: jax.Array, *, valid_BS: jax.Array | None = None,
               dropout_rng: jax.Array | None = None) -> EncoderOutput:
        """Encodes inputs int [B, S] (valid_BS: bool [B, S], False for padding)."""
        tokens_BS = jnp.asarray(tokens_BS)
        valid_BS = (jnp.ones(tokens_BS.shape, jnp.bool_) if valid_BS is None
                    else jnp.asarray(valid_BS, jnp.bool_))
        _check_tokens(self.config, "inputs", tokens_BS, valid_BS)
        rngs = None if dropout_rng is None else nnx.Rngs(dropout=dropout_rng)
        S = tokens_BS.shape[1]
        positions_S = jnp.arange(S)
        x_BSD = self._embed(tokens_BS, positions_S, rngs)
        encoded_BSD, _, _, _ = self.encoder(
            x_BSD, mask=padding_mask(valid_BS), bias=self.encoder.position_bias(positions_S,
                                                                               positions_S),
            rngs=rngs)
        return EncoderOutput(encoded_BSD=encoded_BSD, valid_BS=valid_BS)

    def init_self_cache(self, batch_size: int, max_len: int,
                        dtype: jnp.dtype = jnp.float32) -> KVCache:
        """An empty decoder self-attention cache of `max_len` slots."""
        if not 1 <= max_len <= self.config.max_seq_len:
            raise ValueError(f"max_len must lie in [1, {self.config.max_seq_len}] (max_seq_len); "
                             f"got {max_len}")
        return init_kv_cache(num_layers=self.config.decoder_layers, batch_size=batch_size,
                             max_len=max_len, num_kv_heads=self.config.num_heads,
                             head_dim=self.config.block_config(cross_attention=True).head_size,
                             dtype=dtype)

    def encoder_context(self, encoder_output: EncoderOutput) -> EncoderContext:
        """Every decoder layer's cross-attention keys and values, computed now, once."""
        cross_kv = tuple(block.cross_attn.cross_kv(encoder_output.encoded_BSD)
                         for block in self.decoder.blocks)
        return EncoderContext(cross_kv=cross_kv, encoder_valid_BS=encoder_output.valid_BS)

    def init_decode_cache(self, encoder_output: EncoderOutput, max_len: int,
                          dtype: jnp.dtype = jnp.float32) -> DecodeCache:
        """An empty decoder cache of `max_len` slots, with every layer's cross-attention
        keys and values computed from the encoder output now, once."""
        batch = encoder_output.encoded_BSD.shape[0]
        context = self.encoder_context(encoder_output)
        return DecodeCache(self_cache=self.init_self_cache(batch, max_len, dtype),
                           cross_kv=context.cross_kv, encoder_valid_BS=context.encoder_valid_BS)

    def decode_step(self, tokens_BT: jax.Array, cache: KVCache, positions_BT: jax.Array,
                    context: EncoderContext) -> tuple[jax.Array, KVCache]:
        """The `flaxzoo.decoding` step function over the decoder: `(logits [B, T, V],
        self-attention cache)`.

        `cache` is the decoder's self-attention cache (`init_self_cache`); `context`
        holds the encoder's cross-attention keys and values (`encoder_context`), so
        beam search tiles them once and never reorders them. A token at a negative
        position is padding (`decoding.PAD_POSITION`), never attended to.
        """
        positions_BT = jnp.asarray(positions_BT)
        full = DecodeCache(self_cache=cache, cross_kv=context.cross_kv,
                           encoder_valid_BS=context.encoder_valid_BS)
        logits_BTV, full = self.decode(tokens_BT, jnp.maximum(positions_BT, 0), cache=full,
                                       valid_BT=positions_BT >= 0)
        return logits_BTV, full.self_cache

    def decode(
        self,
        tokens_BT: jax.Array,
        positions_BT: jax.Array,
        *,
        encoder_output: EncoderOutput | None = None,
        cache: DecodeCache | None = None,
        valid_BT: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
        return_weights: bool = False,
    ):
        """Next-token logits for decoder inputs.

        Args:
          tokens_BT: int [B, T], starting with `decoder_start_id` (teacher forcing:
            the targets shifted right).
          positions_BT: int [B, T], the tokens' positions in the target.
          encoder_output: for a whole-sequence pass without a cache.
          cache: a DecodeCache from `init_decode_cache` (then no encoder_output):
            the tokens are appended to it and the cross-attention keys and values
            are read from it, never recomputed.
          valid_BT: bool [B, T], False for padding; default all True.
          dropout_rng: a PRNG key turns dropout on (training).
          return_weights: also return self and cross attention weights,
            [L, B, N, T, T or cache slots] and [L, B, N, T, S].

        Returns:
          (logits [B, T, V] float32, updated cache or None), plus
          (self_weights, cross_weights) with `return_weights`.
        """
        if (encoder_output is None) == (cache is None):
            raise ValueError("pass exactly one of encoder_output (no cache) and cache")
        config = self.config
        tokens_BT, positions_BT = jnp.asarray(tokens_BT), jnp.asarray(positions_BT)
        valid_BT = (jnp.ones(tokens_BT.shape, jnp.bool_) if valid_BT is None
                    else jnp.asarray(valid_BT, jnp.bool_))
        _check_tokens(config, "targets", tokens_BT, valid_BT, positions_BT)
        rngs = None if dropout_rng is None else nnx.Rngs(dropout=dropout_rng)
        T = tokens_BT.shape[1]
        x_BTD = self._embed(tokens_BT, positions_BT, rngs)
        if cache is None:
            encoder_valid_BS = encoder_output.valid_BS
            cross_kv = tuple(block.cross_attn.cross_kv(encoder_output.encoded_BSD)
                             for block in self.decoder.blocks)
            key_positions_BS, key_valid_BS = positions_BT, valid_BT
            mask = causal_mask(T) & padding_mask(key_valid_BS)
            layer_caches, cache_length = None, None
        else:
            self_cache = cache.self_cache
            if not isinstance(self_cache.length, jax.core.Tracer) and (
                    int(self_cache.length) + T > self_cache.max_len):
                raise ValueError(f"cache overflow: {int(self_cache.length)} filled + {T} new "
                                 f"tokens > {self_cache.max_len} slots")
            encoder_valid_BS, cross_kv = cache.encoder_valid_BS, cache.cross_kv
            key_positions_BS, key_valid_BS = write_slots(self_cache, positions_BT, valid_BT)
            mask = (causal_mask(T, self_cache.max_len, offset=self_cache.length)
                    & padding_mask(key_valid_BS))
            layer_caches, cache_length = self_cache.layers, self_cache.length
        x_BTD, new_layers, self_weights, cross_weights = self.decoder(
            x_BTD, mask=mask, bias=self.decoder.position_bias(positions_BT, key_positions_BS),
            positions_BT=positions_BT, caches=layer_caches, cache_length=cache_length,
            cross_kv=cross_kv, cross_mask=padding_mask(encoder_valid_BS), rngs=rngs,
            return_weights=return_weights)
        if config.tie_word_embeddings:
            if config.scale_tied_logits:
                x_BTD = x_BTD * config.embed_dim ** -0.5
            logits_BTV = self.token_embed.attend(x_BTD)
        else:
            logits_BTV = self.lm_head(x_BTD)
        if cache is not None:
            cache = cache.replace(self_cache=KVCache(
                layers=new_layers, length=cache.self_cache.length + T,
                positions_BS=key_positions_BS, valid_BS=key_valid_BS))
        logits_BTV = logits_BTV.astype(jnp.float32)
        if return_weights:
            return logits_BTV, cache, (self_weights, cross_weights)
        return logits_BTV, cache

    def __call__(self, inputs_BS, decoder_inputs_BT, *, inputs_valid_BS=None,
                 decoder_valid_BT=None, dropout_rng=None):
        """Teacher-forced logits [B, T, V]: encode the inputs, decode the shifted targets."""
        encoder_rng = decoder_rng = None
        if dropout_rng is not None:
            encoder_rng, decoder_rng = jax.random.split(dropout_rng)
        encoded = self.encode(inputs_BS, valid_BS=inputs_valid_BS, dropout_rng=encoder_rng)
        decoder_inputs_BT = jnp.asarray(decoder_inputs_BT)
        positions_BT = jnp.broadcast_to(jnp.arange(decoder_inputs_BT.shape[1]),
                                        decoder_inputs_BT.shape)
        logits_BTV, _ = self.decode(decoder_inputs_BT, positions_BT, encoder_output=encoded,
                                    valid_BT=decoder_valid_BT, dropout_rng=decoder_rng)
        return logits_BTV
