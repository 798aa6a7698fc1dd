"""layer_norm and rms_norm against float64 numpy formulas and Hugging Face PyTorch."""

import jax.numpy as jnp
import numpy as np
import pytest

from flaxzoo.layers import layer_norm
from flaxzoo.layers.norms import rms_norm


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


# --- rms_norm --------------------------------------------------------------------------


def numpy_rms_norm(x, scale, eps):
    x = np.asarray(x, np.float64)
    return x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) * np.asarray(scale, np.float64)


def test_rms_norm_matches_numpy():
    rng = np.random.default_rng(2)
    x = rng.normal(loc=0.5, size=(3, 4, 16)).astype(np.float32)
    scale = rng.normal(size=16).astype(np.float32)
    np.testing.assert_allclose(rms_norm(x, scale, epsilon=1e-6), numpy_rms_norm(x, scale, 1e-6),
                               rtol=1e-5, atol=1e-6)
    # No centring: a constant row c maps to sign(c) (up to epsilon), not to zero.
    np.testing.assert_allclose(rms_norm(np.full((1, 8), -3.0, np.float32)), -np.ones((1, 8)),
                               rtol=1e-6)


def test_rms_norm_epsilon_inside_square_root_and_no_scale():
    x = jnp.array([[3.0, 4.0]])  # mean square 12.5; + 3.5 -> divide by sqrt(16) = 4
    np.testing.assert_allclose(rms_norm(x, epsilon=3.5), [[0.75, 1.0]], rtol=1e-6)


@pytest.mark.parametrize("reference", ["t5", "llama"])
def test_rms_norm_matches_hugging_face(reference):
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm
    from transformers.models.t5.modeling_t5 import T5LayerNorm

    rng = np.random.default_rng(3)
    x = (rng.normal(size=(2, 5, 32)) * 3.0).astype(np.float32)
    scale = rng.normal(size=32).astype(np.float32)
    eps = 1e-6
    module = T5LayerNorm(32, eps=eps) if reference == "t5" else LlamaRMSNorm(32, eps=eps)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(scale))
        expected = module.eval()(torch.from_numpy(x)).numpy()
    out = rms_norm(jnp.asarray(x), jnp.asarray(scale), epsilon=eps)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-6, atol=1e-6)


def test_rms_norm_float16_large_values_stay_finite():
    rng = np.random.default_rng(4)
    x16 = (rng.normal(size=(4, 64)) * 3e3).astype(np.float16)
    # Squaring in float16 itself would overflow (max 65504), so the statistics must not.
    with np.errstate(over="ignore"):
        assert np.isinf(np.square(x16)).any()
    out = rms_norm(jnp.asarray(x16))
    assert out.dtype == jnp.float16
    out32 = np.asarray(out, np.float32)
    assert np.isfinite(out32).all()
    np.testing.assert_allclose(out32, rms_norm(x16.astype(np.float32)), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(out32, numpy_rms_norm(x16, 1.0, 1e-6), rtol=2e-3, atol=2e-3)


def test_rms_norm_bfloat16_large_values_close_to_float32():
    rng = np.random.default_rng(5)
    x32 = (rng.normal(size=(4, 512)) * 1e6).astype(np.float32)
    x_bf16 = jnp.asarray(x32, jnp.bfloat16)
    scale = jnp.asarray(rng.uniform(0.5, 2.0, size=512), jnp.bfloat16)
    out = rms_norm(x_bf16, scale)
    assert out.dtype == jnp.bfloat16
    out32 = np.asarray(out, np.float32)
    assert np.isfinite(out32).all()
    reference = numpy_rms_norm(np.asarray(x_bf16, np.float32), np.asarray(scale, np.float32), 1e-6)
    np.testing.assert_allclose(out32, reference, rtol=1e-2, atol=1e-2)


def test_rms_norm_errors():
    with pytest.raises(ValueError, match="scale"):
        rms_norm(np.zeros((2, 4), np.float32), np.ones(3, np.float32))
    with pytest.raises(ValueError, match="scale"):
        rms_norm(np.zeros((2, 4), np.float32), np.ones((1, 4), np.float32))
    with pytest.raises(ValueError, match="epsilon"):
        rms_norm(np.zeros((2, 4), np.float32), epsilon=-1.0)
    with pytest.raises(ValueError, match="x"):
        rms_norm(np.float32(1.0))
