"""flaxzoo.layers: pure functions on jax arrays (no Flax, no state, no configs)."""

from flaxzoo.layers.attention import dot_product_attention
from flaxzoo.layers.masks import causal_mask, padding_mask
from flaxzoo.layers.norms import layer_norm
from flaxzoo.layers.positions import sinusoidal_positions

__all__ = [
    "causal_mask",
    "dot_product_attention",
    "layer_norm",
    "padding_mask",
    "sinusoidal_positions",
]
