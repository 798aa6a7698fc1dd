"""flaxzoo.models: Flax NNX models and their configs."""

from flaxzoo.models.cache import KVCache, LayerKV, init_kv_cache
from flaxzoo.models.gpt import GPT, PRESETS, GPTConfig, init_cache

__all__ = ["GPT", "GPTConfig", "KVCache", "LayerKV", "PRESETS", "init_cache", "init_kv_cache"]
