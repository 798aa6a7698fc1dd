"""flaxzoo.models: Flax NNX models and their configs.

Block, BlockConfig, RotaryConfig: the one transformer block every family is built from.
GPT, GPTConfig (PRESETS, POSITIONS): the decoder-only language model.
BertModel, BertForMaskedLM, BertForSequenceClassification, BertConfig: the encoder.
T5, T5Config (EncoderOutput, DecodeCache, EncoderContext): the encoder-decoder, `encode`
    then `decode`; `GPT.decode_step` and `T5.decode_step` are flaxzoo.decoding step functions.
KVCache, LayerKV, init_cache, init_kv_cache: the explicit key/value cache.
"""

from flaxzoo.models.bert import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertModel,
    BertOutput,
)
from flaxzoo.models.blocks import Block, BlockConfig, BlockOutput, RotaryConfig
from flaxzoo.models.cache import KVCache, LayerKV, init_kv_cache
from flaxzoo.models.gpt import GPT, POSITIONS, PRESETS, GPTConfig, init_cache
from flaxzoo.models.t5 import T5, DecodeCache, EncoderContext, EncoderOutput, T5Config

__all__ = [
    "BertConfig",
    "BertForMaskedLM",
    "BertForSequenceClassification",
    "BertModel",
    "BertOutput",
    "GPT",
    "T5",
    "T5Config",
    "DecodeCache",
    "EncoderContext",
    "EncoderOutput",
    "POSITIONS",
    "PRESETS",
    "Block",
    "BlockConfig",
    "BlockOutput",
    "GPTConfig",
    "KVCache",
    "LayerKV",
    "RotaryConfig",
    "init_cache",
    "init_kv_cache",
]
