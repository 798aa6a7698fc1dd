"""flaxzoo.layers exports its whole API, documents shapes, and never imports Flax."""

import inspect
import subprocess
import sys

import flaxzoo.layers as layers

EXPECTED = {
    "dot_product_attention", "causal_mask", "padding_mask", "sliding_window_mask",
    "segment_mask", "sinusoidal_positions", "relative_positions", "apply_rope",
    "rope_inverse_frequencies", "RopeScaling", "alibi_slopes", "alibi_bias",
    "relative_position_bucket", "relative_position_bias", "layer_norm", "rms_norm",
    "gelu", "gelu_tanh", "relu", "silu", "geglu", "swiglu", "get_activation",
    "attention_entropy", "attention_rollout",
}


def test_every_layer_function_is_exported():
    assert EXPECTED <= set(layers.__all__)
    for name in layers.__all__:
        assert hasattr(layers, name), name


def test_every_public_function_documents_its_shapes():
    for name in sorted(EXPECTED):
        obj = getattr(layers, name)
        doc = inspect.getdoc(obj) or ""
        if inspect.isfunction(obj) and name != "get_activation":
            # Shapes are written as [..., D], [B, T, N, H], ...
            assert "[" in doc and "]" in doc, f"{name} has no shapes in its docstring"
        assert doc, f"{name} has no docstring"


def test_layers_import_no_flax():
    code = ("import sys, flaxzoo.layers; "
            "bad = sorted(m for m in sys.modules if m == 'flax' or m.startswith('flax.')); "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
