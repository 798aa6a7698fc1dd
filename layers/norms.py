"""Normalisation layers as pure functions.

Dimension key: D normalised (last) axis.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def layer_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    bias: jax.Array | None = None,
    *,
    epsilon: float = 1e-5,
) -> jax.Array:
    """(x - mean) / sqrt(var + epsilon) * scale + bias over the last axis.

    Statistics are computed in float32 with a two-pass variance (mean of the
    centred squares), so rows with a large mean keep an accurate variance.

    Args:
      x: [..., D].
      scale: optional [D].
      bias: optional [D].
      epsilon: added to the variance inside the square root.

    Returns:
      [..., D] in the dtype of x.
    """
    dim = x.shape[-1]
    for name, param in (("scale", scale), ("bias", bias)):
        if param is not None and param.shape != (dim,):
            raise ValueError(f"{name} must have shape ({dim},); got {param.shape}")
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    centred = x32 - mean
    var = jnp.mean(jnp.square(centred), axis=-1, keepdims=True)
    y = centred * jax.lax.rsqrt(var + epsilon)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    if bias is not None:
        y = y + bias.astype(jnp.float32)
    return y.astype(x.dtype)
