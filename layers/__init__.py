"""flaxzoo.layers: pure functions on jax arrays (no Flax, no state, no configs).

Attention      dot_product_attention (mask, bias, scale, is_causal, dropout, grouped
               heads, backends in IMPLEMENTATIONS)
Masks          causal_mask, padding_mask, sliding_window_mask, segment_mask
Positions      sinusoidal_positions, relative_positions; rotary: apply_rope,
               rope_inverse_frequencies, RopeScaling; ALiBi: alibi_slopes, alibi_bias;
               T5: relative_position_bucket, relative_position_bias
Norms          layer_norm, rms_norm
Activations    gelu, gelu_tanh, relu, silu, geglu, swiglu, get_activation, ACTIVATIONS
Analysis       attention_entropy, attention_rollout
"""

from flaxzoo.layers.activations import (
    ACTIVATIONS,
    geglu,
    gelu,
    gelu_tanh,
    get_activation,
    relu,
    silu,
    swiglu,
)
from flaxzoo.layers.alibi import alibi_bias, alibi_slopes
from flaxzoo.layers.analysis import attention_entropy, attention_rollout
from flaxzoo.layers.attention import IMPLEMENTATIONS, dot_product_attention
from flaxzoo.layers.masks import causal_mask, padding_mask, segment_mask, sliding_window_mask
from flaxzoo.layers.norms import layer_norm, rms_norm
from flaxzoo.layers.positions import relative_positions, sinusoidal_positions
from flaxzoo.layers.relative_bias import relative_position_bias, relative_position_bucket
from flaxzoo.layers.rope import RopeScaling, apply_rope, rope_inverse_frequencies

__all__ = [
    "ACTIVATIONS",
    "IMPLEMENTATIONS",
    "RopeScaling",
    "alibi_bias",
    "alibi_slopes",
    "apply_rope",
    "attention_entropy",
    "attention_rollout",
    "causal_mask",
    "dot_product_attention",
    "geglu",
    "gelu",
    "gelu_tanh",
    "get_activation",
    "layer_norm",
    "padding_mask",
    "relative_position_bias",
    "relative_position_bucket",
    "relative_positions",
    "relu",
    "rms_norm",
    "rope_inverse_frequencies",
    "segment_mask",
    "silu",
    "sinusoidal_positions",
    "sliding_window_mask",
    "swiglu",
]
