"""A BERT-shaped bidirectional encoder in Flax NNX, with masked-LM and classification heads.

Dimension key: B batch, T sequence length, D model width, N heads, F feedforward
width, V vocabulary, C classes, L layers.

Word, position and token-type embeddings are summed and normalised, then L blocks
of bidirectional self-attention (`models.blocks.Block`) run with a padding mask.
Post-norm as published (Devlin et al. 2019), pre-norm by config (then a final norm
follows the stack). Heads:
  `BertModel`                        hidden states and the pooled [CLS] vector;
  `BertForMaskedLM`                  dense + activation + norm, then the word
                                     embeddings (tied) plus a per-token bias;
  `BertForSequenceClassification`    dropout + linear on the pooled vector.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from flaxzoo.layers import get_activation, padding_mask
from flaxzoo.models.blocks import Block, BlockConfig, LayerNorm, default_init, make_norm
from flaxzoo.models.config import StackConfig, check_positive_ints


@dataclasses.dataclass(frozen=True, kw_only=True)
class BertConfig(StackConfig):
    """Shape and regularisation of a BERT model; validated on construction."""

    PRESET_NAMES: ClassVar[tuple[str, ...]] = ("tiny", "bert_base", "minilm_l6")

    type_vocab_size: int = 2
    """Number of token types (segment A / segment B)."""
    head_dim: int | None = None
    """H; None means embed_dim / num_heads."""
    activation: str = "gelu"
    """Feedforward (and masked-LM transform) activation; BERT uses exact GELU."""
    pre_norm: bool = False
    """False: post-norm as published; True: pre-norm blocks and a final norm."""
    dropout_rate: float = 0.1
    """Dropout on embeddings, residual branches and the classifier input in training."""
    attention_dropout_rate: float = 0.1
    """Dropout on the attention weights in training."""
    layer_norm_epsilon: float = 1e-12
    num_labels: int = 2
    """C, classes of the sequence-classification head."""

    def __post_init__(self):
        check_positive_ints(self, "vocab_size", "max_seq_len", "num_layers", "type_vocab_size",
                            "num_labels")
        try:
            self.block_config()
        except ValueError as error:
            raise ValueError(str(error).replace("BlockConfig.", "BertConfig.")
                             .replace("norm_epsilon", "layer_norm_epsilon")) from None

    def block_config(self) -> BlockConfig:
        """The BlockConfig every layer of this model is built from."""
        return BlockConfig(
            embed_dim=self.embed_dim, num_heads=self.num_heads, mlp_dim=self.mlp_dim,
            head_dim=self.head_dim, norm="layer_norm", norm_epsilon=self.layer_norm_epsilon,
            pre_norm=self.pre_norm, activation=self.activation, dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
        )

    @classmethod
    def tiny(cls, *, vocab_size: int = 32, **overrides) -> BertConfig:
        """For tests: D=16, N=4, L=2."""
        return cls(**{**dict(vocab_size=vocab_size, max_seq_len=16, num_layers=2, num_heads=4,
                             embed_dim=16, mlp_dim=64), **overrides})

    @classmethod
    def bert_base(cls, *, vocab_size: int = 30522, **overrides) -> BertConfig:
        """BERT-base, uncased: 12 layers, 768 wide, 12 heads (110M parameters)."""
        return cls(**{**dict(vocab_size=vocab_size, max_seq_len=512, num_layers=12,
                             num_heads=12, embed_dim=768, mlp_dim=3072), **overrides})

    @classmethod
    def minilm_l6(cls, *, vocab_size: int = 30522, **overrides) -> BertConfig:
        """The all-MiniLM-L6-v2 shape: 6 layers, 384 wide, 12 heads (22.7M parameters)."""
        return cls(**{**dict(vocab_size=vocab_size, max_seq_len=512, num_layers=6,
                             num_heads=12, embed_dim=384, mlp_dim=1536), **overrides})


@flax.struct.dataclass
class BertOutput:
    """Encoder outputs: hidden [B, T, D], pooled [B, D] (or None), weights [L, B, N, T, T]."""

    hidden_BTD: jax.Array
    pooled_BD: jax.Array | None = None
    weights_LBNTS: jax.Array | None = None


def _check_inputs(config: BertConfig, tokens_BT, positions_BT, token_types_BT, valid_BT):
    if tokens_BT.ndim != 2 or not jnp.issubdtype(tokens_BT.dtype, jnp.integer):
        raise ValueError(f"tokens must be integers of shape [batch, length]; "
                         f"got {tokens_BT.dtype} {tokens_BT.shape}")
    for name, arr in (("positions", positions_BT), ("token_types", token_types_BT),
                      ("valid", valid_BT)):
        if arr.shape != tokens_BT.shape:
            raise ValueError(f"{name} must have the shape of tokens {tokens_BT.shape}; "
                             f"got {arr.shape}")
    if tokens_BT.shape[1] > config.max_seq_len:
        raise ValueError(f"{tokens_BT.shape[1]} tokens do not fit: at most "
                         f"{config.max_seq_len} (max_seq_len)")
    for name, arr, limit in (("positions", positions_BT, config.max_seq_len),
                             ("token_types", token_types_BT, config.type_vocab_size)):
        if not isinstance(arr, jax.core.Tracer) and arr.size:
            low, high = int(arr.min()), int(arr.max())
            if low < 0 or high >= limit:
                raise ValueError(f"{name} must lie in [0, {limit}); got values from {low} "
                                 f"to {high}")


class BertModel(nnx.Module):
    """The encoder: embeddings, L bidirectional blocks, optional pooler."""

    def __init__(self, config: BertConfig, *, add_pooler: bool = True, rngs: nnx.Rngs):
        self.config = config
        D = config.embed_dim
        self.token_embed = nnx.Embed(config.vocab_size, D, embedding_init=default_init,
                                     rngs=rngs)
        self.position_embed = nnx.Param(default_init(rngs.params(), (config.max_seq_len, D)))
        self.token_type_embed = nnx.Embed(config.type_vocab_size, D,
                                          embedding_init=default_init, rngs=rngs)
        self.embed_norm = LayerNorm(D, epsilon=config.layer_norm_epsilon)
        self.embed_dropout = nnx.Dropout(config.dropout_rate)
        block_config = config.block_config()
        self.blocks = nnx.List([Block(block_config, num_layers=config.num_layers, rngs=rngs)
                                for _ in range(config.num_layers)])
        self.final_norm = make_norm(block_config) if config.pre_norm else None
        self.pooler = (nnx.Linear(D, D, kernel_init=default_init, rngs=rngs)
                       if add_pooler else None)

    def __call__(
        self,
        tokens_BT: jax.Array,
        *,
        valid_BT: jax.Array | None = None,
        token_types_BT: jax.Array | None = None,
        positions_BT: jax.Array | None = None,
        dropout_rng: jax.Array | None = None,
        return_weights: bool = False,
    ) -> BertOutput:
        """Hidden states of every token.

        Args:
          tokens_BT: int [B, T].
          valid_BT: bool [B, T], False for padding keys no token may attend to;
            default all True. Padded positions still get (meaningless) outputs.
          token_types_BT: int [B, T] in [0, type_vocab_size); default 0.
          positions_BT: int [B, T] in [0, max_seq_len); default 0, 1, ..., T - 1.
          dropout_rng: a PRNG key turns dropout on (training); None is deterministic.
          return_weights: also return every layer's attention weights.
        """
        tokens_BT = jnp.asarray(tokens_BT)
        B, T = tokens_BT.shape[:2] if tokens_BT.ndim == 2 else (0, 0)
        valid_BT = jnp.ones((B, T), bool) if valid_BT is None else jnp.asarray(valid_BT, bool)
        token_types_BT = (jnp.zeros((B, T), jnp.int32) if token_types_BT is None
                          else jnp.asarray(token_types_BT))
        positions_BT = (jnp.broadcast_to(jnp.arange(T), (B, T)) if positions_BT is None
                        else jnp.asarray(positions_BT))
        config = self.config
        _check_inputs(config, tokens_BT, positions_BT, token_types_BT, valid_BT)
        rngs = None if dropout_rng is None else nnx.Rngs(dropout=dropout_rng)

        x_BTD = (self.token_embed(tokens_BT)
                 + self.position_embed[...][jnp.clip(positions_BT, 0, config.max_seq_len - 1)]
                 + self.token_type_embed(token_types_BT))
        x_BTD = self.embed_dropout(self.embed_norm(x_BTD), deterministic=rngs is None,
                                   rngs=rngs)
        mask_B11S = padding_mask(valid_BT)
        weights = []
        for block in self.blocks:
            out = block(x_BTD, mask=mask_B11S, rngs=rngs, return_weights=return_weights)
            x_BTD = out.x_BTD
            weights.append(out.self_weights_BNTS)
        if self.final_norm is not None:
            x_BTD = self.final_norm(x_BTD)
        pooled_BD = None if self.pooler is None else jnp.tanh(self.pooler(x_BTD[:, 0]))
        return BertOutput(hidden_BTD=x_BTD, pooled_BD=pooled_BD,
                          weights_LBNTS=jnp.stack(weights) if return_weights else None)


class BertForMaskedLM(nnx.Module):
    """Masked-LM logits over the vocabulary for every position."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        D = config.embed_dim
        self.bert = BertModel(config, add_pooler=False, rngs=rngs)
        self.activation = config.activation
        self.mlm_dense = nnx.Linear(D, D, kernel_init=default_init, rngs=rngs)
        self.mlm_norm = LayerNorm(D, epsilon=config.layer_norm_epsilon)
        self.mlm_bias = nnx.Param(jnp.zeros((config.vocab_size,), jnp.float32))

    def __call__(self, tokens_BT, **kwargs) -> tuple[jax.Array, BertOutput]:
        """(logits [B, T, V] float32, encoder output); keyword arguments as `BertModel`."""
        out = self.bert(tokens_BT, **kwargs)
        h_BTD = self.mlm_norm(get_activation(self.activation)(self.mlm_dense(out.hidden_BTD)))
        logits_BTV = self.bert.token_embed.attend(h_BTD) + self.mlm_bias[...]
        return logits_BTV.astype(jnp.float32), out


class BertForSequenceClassification(nnx.Module):
    """Class logits from the pooled [CLS] vector."""

    def __init__(self, config: BertConfig, *, rngs: nnx.Rngs):
        self.bert = BertModel(config, add_pooler=True, rngs=rngs)
        self.classifier_dropout = nnx.Dropout(config.dropout_rate)
        self.classifier = nnx.Linear(config.embed_dim, config.num_labels,
                                     kernel_init=default_init, rngs=rngs)

    def __call__(self, tokens_BT, *, dropout_rng: jax.Array | None = None,
                 **kwargs) -> tuple[jax.Array, BertOutput]:
        """(logits [B, C] float32, encoder output); keyword arguments as `BertModel`."""
        out = self.bert(tokens_BT, dropout_rng=dropout_rng, **kwargs)
        rngs = None if dropout_rng is None else nnx.Rngs(dropout=jax.random.fold_in(dropout_rng, 1))
        pooled_BD = self.classifier_dropout(out.pooled_BD, deterministic=rngs is None, rngs=rngs)
        return self.classifier(pooled_BD).astype(jnp.float32), out
