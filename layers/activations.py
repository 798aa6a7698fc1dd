"""Feedforward activations, plain and gated, and their lookup by config name.

Dimension key: F FFN width (any leading axes [...] pass through).

Every function computes in float32 when given a lower-precision float (bfloat16,
float16) and returns the input's dtype. Note that `gelu` defaults to the exact
erf form, as PyTorch and Hugging Face's "gelu" do; `jax.nn.gelu` defaults to the
tanh approximation.

Models pick their activation by name with `get_activation(config.activation)`:

  "gelu"       exact GELU, 0.5 x (1 + erf(x / sqrt 2))       (BERT)
  "gelu_tanh"  tanh approximation of GELU                    (GPT-2, T5 v1.1 "gelu_new")
  "relu"       max(x, 0)                                     (T5, original Transformer)
  "silu"       x * sigmoid(x), a.k.a. swish                  (Llama, in swiglu)
"""

from __future__ import annotations

import types
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp


def _check_float(name: str, x: jax.Array) -> jax.Array:
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{name} must be a floating-point array; got dtype {x.dtype}")
    return x


def _compute_dtype(dtype) -> jnp.dtype:
    """float32 for half-precision inputs; wider floats are kept."""
    return jnp.promote_types(dtype, jnp.float32)


def gelu(x: jax.Array, *, approximate: bool = False) -> jax.Array:
    """Gaussian error linear unit, x * Phi(x) (Hendrycks & Gimpel 2016).

    Args:
      x: float [..., F].
      approximate: False for the exact form 0.5 x (1 + erf(x / sqrt 2)); True
        for the tanh form 0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x**3))),
        PyTorch's approximate="tanh" and Hugging Face's "gelu_new".

    Returns:
      [..., F] in the dtype of x.
    """
    x = _check_float("x", x)
    y = jax.nn.gelu(x.astype(_compute_dtype(x.dtype)), approximate=approximate)
    return y.astype(x.dtype)


def gelu_tanh(x: jax.Array) -> jax.Array:
    """`gelu(x, approximate=True)`: the tanh approximation. float [..., F] -> [..., F]."""
    return gelu(x, approximate=True)


def relu(x: jax.Array) -> jax.Array:
    """max(x, 0). float [..., F] -> [..., F] in the dtype of x (gradient 0 at 0)."""
    x = _check_float("x", x)
    return jax.nn.relu(x)


def silu(x: jax.Array) -> jax.Array:
    """x * sigmoid(x), also called swish. float [..., F] -> [..., F] in x's dtype."""
    x = _check_float("x", x)
    return jax.nn.silu(x.astype(_compute_dtype(x.dtype))).astype(x.dtype)


def _check_gated(x_gate: jax.Array, x_up: jax.Array) -> tuple[jax.Array, jax.Array]:
    x_gate = _check_float("x_gate", x_gate)
    x_up = _check_float("x_up", x_up)
    if x_gate.shape != x_up.shape:
        raise ValueError(
            f"x_gate and x_up must have the same shape [..., F]; "
            f"got x_gate {x_gate.shape} and x_up {x_up.shape}"
        )
    return x_gate, x_up


def _gated(act: Callable[[jax.Array], jax.Array], x_gate, x_up) -> jax.Array:
    out_dtype = jnp.result_type(x_gate, x_up)
    compute = _compute_dtype(out_dtype)
    y = act(x_gate.astype(compute)) * x_up.astype(compute)
    return y.astype(out_dtype)


def geglu(x_gate: jax.Array, x_up: jax.Array, *, approximate: bool = False) -> jax.Array:
    """GELU-gated linear unit (Shazeer 2020): gelu(x_gate) * x_up.

    The two inputs are the two projections of the FFN input, W_gate x and
    W_up x; the caller applies the down projection afterwards. Shapes must
    match exactly (no broadcasting).

    Args:
      x_gate: float [..., F], passed through GELU.
      x_up: float [..., F], the linear branch.
      approximate: use the tanh form of GELU (T5 v1.1 and Gemma use it).

    Returns:
      [..., F] in the promoted dtype of the two inputs.
    """
    x_gate, x_up = _check_gated(x_gate, x_up)
    return _gated(lambda g: jax.nn.gelu(g, approximate=approximate), x_gate, x_up)


def swiglu(x_gate: jax.Array, x_up: jax.Array) -> jax.Array:
    """Swish-gated linear unit (Shazeer 2020, used by Llama): silu(x_gate) * x_up.

    Args:
      x_gate: float [..., F], passed through SiLU.
      x_up: float [..., F], the linear branch; same shape as x_gate.

    Returns:
      [..., F] in the promoted dtype of the two inputs.
    """
    x_gate, x_up = _check_gated(x_gate, x_up)
    return _gated(jax.nn.silu, x_gate, x_up)


ACTIVATIONS: Mapping[str, Callable[[jax.Array], jax.Array]] = types.MappingProxyType(
    {
        "gelu": gelu,
        "gelu_tanh": gelu_tanh,
        "relu": relu,
        "silu": silu,
    }
)
"""Read-only map from config names to single-input activation functions."""


def get_activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation called `name` in ACTIVATIONS ("gelu", "gelu_tanh", "relu", "silu").

    Raises:
      ValueError: naming `name` and listing the valid names.
    """
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"name must be one of {sorted(ACTIVATIONS)}; got {name!r}")
    return ACTIVATIONS[name]
