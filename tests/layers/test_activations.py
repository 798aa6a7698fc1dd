"""Activations against float64 numpy formulas and torch.nn.functional."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from flaxzoo.layers.activations import (
    ACTIVATIONS,
    geglu,
    gelu,
    get_activation,
    relu,
    silu,
    swiglu,
)

_erf = np.vectorize(math.erf)


def np_gelu(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def np_gelu_tanh(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


def np_relu(x):
    return np.maximum(np.asarray(x, np.float64), 0.0)


def np_silu(x):
    x = np.asarray(x, np.float64)
    return x / (1.0 + np.exp(-x))


FORMULAS = {"gelu": np_gelu, "gelu_tanh": np_gelu_tanh, "relu": np_relu, "silu": np_silu}


@pytest.fixture(scope="module")
def x():
    rng = np.random.default_rng(0)
    # A dense grid through the interesting region plus wide random values.
    grid = np.linspace(-6.0, 6.0, 241)
    wide = rng.normal(scale=10.0, size=256)
    return np.concatenate([grid, wide, [0.0]]).astype(np.float32).reshape(2, 3, 83)


@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_matches_numpy_formula(name, x):
    out = get_activation(name)(jnp.asarray(x))
    assert out.dtype == jnp.float32 and out.shape == x.shape
    np.testing.assert_allclose(np.asarray(out), FORMULAS[name](x), rtol=1e-6, atol=1e-6)


def test_gelu_defaults_to_exact_erf_form(x):
    # Unlike jax.nn.gelu, whose default is the tanh approximation.
    assert np.abs(np_gelu(x) - np_gelu_tanh(x)).max() > 1e-4  # the two forms do differ
    np.testing.assert_allclose(gelu(x), np_gelu(x), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(gelu(x, approximate=True), np_gelu_tanh(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "ours, torch_name, kwargs",
    [
        (lambda v: gelu(v), "gelu", {"approximate": "none"}),
        (lambda v: gelu(v, approximate=True), "gelu", {"approximate": "tanh"}),
        (silu, "silu", {}),
        (relu, "relu", {}),
    ],
    ids=["gelu", "gelu_tanh", "silu", "relu"],
)
def test_matches_torch(ours, torch_name, kwargs, x):
    torch = pytest.importorskip("torch")
    expected = getattr(torch.nn.functional, torch_name)(torch.from_numpy(x), **kwargs).numpy()
    np.testing.assert_allclose(np.asarray(ours(jnp.asarray(x))), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype, tol", [(jnp.bfloat16, 1e-2), (jnp.float16, 2e-3)])
@pytest.mark.parametrize("name", sorted(FORMULAS))
def test_half_precision_dtype_kept(name, dtype, tol, x):
    x_half = jnp.asarray(x, dtype)
    out = get_activation(name)(x_half)
    assert out.dtype == dtype
    expected = FORMULAS[name](np.asarray(x_half, np.float32))
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, rtol=tol, atol=tol)


def test_gated_variants_match_formula():
    rng = np.random.default_rng(1)
    gate = (rng.normal(size=(2, 3, 8)) * 3.0).astype(np.float32)
    up = rng.normal(size=(2, 3, 8)).astype(np.float32)
    np.testing.assert_allclose(geglu(gate, up), np_gelu(gate) * up, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(geglu(gate, up, approximate=True), np_gelu_tanh(gate) * up,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(swiglu(gate, up), np_silu(gate) * up, rtol=1e-6, atol=1e-6)
    # The gate is the argument that goes through the nonlinearity.
    assert not np.allclose(swiglu(gate, up), swiglu(up, gate), atol=1e-3)


@pytest.mark.parametrize("fn", [geglu, swiglu])
def test_gated_variants_keep_dtype(fn):
    rng = np.random.default_rng(2)
    gate = jnp.asarray(rng.normal(size=(4, 16)) * 3.0, jnp.bfloat16)
    up = jnp.asarray(rng.normal(size=(4, 16)), jnp.bfloat16)
    out = fn(gate, up)
    assert out.dtype == jnp.bfloat16
    act = np_gelu if fn is geglu else np_silu
    expected = act(np.asarray(gate, np.float32)) * np.asarray(up, np.float32)
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, rtol=1e-2, atol=1e-2)


def test_registry_names_and_errors():
    assert set(ACTIVATIONS) == {"gelu", "gelu_tanh", "relu", "silu"}
    with pytest.raises(TypeError):
        ACTIVATIONS["tanh"] = jnp.tanh  # read-only: models cannot change it behind our back
    with pytest.raises(ValueError, match=r"name.*gelu_tanh.*'swish'"):
        get_activation("swish")
    with pytest.raises(ValueError, match="name"):
        get_activation(None)


def test_bad_input_errors():
    with pytest.raises(ValueError, match=r"x_gate.*\(2, 8\).*x_up.*\(2, 4\)"):
        swiglu(np.zeros((2, 8), np.float32), np.zeros((2, 4), np.float32))
    with pytest.raises(ValueError, match=r"x_gate.*x_up"):
        geglu(np.zeros((2, 8), np.float32), np.zeros((8,), np.float32))
    with pytest.raises(ValueError, match="x_up"):
        geglu(np.zeros((2, 8), np.float32), np.zeros((2, 8), np.int32))
    with pytest.raises(ValueError, match="x"):
        gelu(np.arange(4))
    with pytest.raises(ValueError, match="x"):
        relu(np.arange(4))
