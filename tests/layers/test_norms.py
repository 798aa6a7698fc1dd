"""layer_norm against a float64 numpy formula."""

import jax.numpy as jnp
import numpy as np
import pytest

from flaxzoo.layers import layer_norm


def numpy_layer_norm(x, scale, bias, eps):
    x = np.asarray(x, np.float64)
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * scale + bias


def test_matches_numpy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4, 16)).astype(np.float32)
    scale, bias = rng.normal(size=16).astype(np.float32), rng.normal(size=16).astype(np.float32)
    np.testing.assert_allclose(layer_norm(x, scale, bias, epsilon=1e-5),
                               numpy_layer_norm(x, scale, bias, 1e-5), atol=1e-5)


def test_large_mean_rows_keep_accurate_variance():
    # E[x^2] - E[x]^2 loses every significant digit here in float32.
    rng = np.random.default_rng(1)
    x = (1e4 + rng.normal(size=(4, 64))).astype(np.float32)
    out = layer_norm(x, epsilon=1e-6)
    np.testing.assert_allclose(out, numpy_layer_norm(x, 1.0, 0.0, 1e-6), atol=2e-3)


def test_epsilon_inside_square_root_and_dtype_kept():
    x = jnp.array([[1.0, -1.0]], jnp.bfloat16)
    out = layer_norm(x, epsilon=3.0)  # var = 1 -> divide by sqrt(4) = 2
    assert out.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out, np.float32), [[0.5, -0.5]])


def test_wrong_parameter_shape():
    with pytest.raises(ValueError, match="scale"):
        layer_norm(np.zeros((2, 4)), np.ones(3))
