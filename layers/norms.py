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


def rms_norm(
    x: jax.Array,
    scale: jax.Array | None = None,
    *,
    epsilon: float = 1e-6,
) -> jax.Array:
    """x / sqrt(mean(x**2) + epsilon) * scale over the last axis (RMSNorm).

    No centring and no bias (Zhang & Sennrich 2019), as in T5 and Llama. The
    mean square is computed in float32, so float16 inputs whose squares would
    overflow float16 (|x| > 256) and long bfloat16 rows stay finite and
    accurate; the result is cast back to x's dtype after the scale is applied.

    The scale multiplies as given. Gemma stores scale - 1 and normalises with
    (1 + scale): pass `1 + scale` yourself for such checkpoints.

    Args:
      x: [..., D].
      scale: optional [D].
      epsilon: >= 0, added to the mean square inside the square root.

    Returns:
      [..., D] in the dtype of x.
    """
    x = jnp.asarray(x)
    if x.ndim < 1:
        raise ValueError(f"x must have at least one axis [..., D]; got shape {x.shape}")
    dim = x.shape[-1]
    if scale is not None:
        scale = jnp.asarray(scale)
        if scale.shape != (dim,):
            raise ValueError(f"scale must have shape ({dim},); got {scale.shape}")
    if isinstance(epsilon, (int, float)) and epsilon < 0:
        raise ValueError(f"epsilon must be >= 0; got {epsilon}")
    x32 = x.astype(jnp.float32)
    mean_square = jnp.mean(jnp.square(x32), axis=-1, keepdims=True)
    y = x32 * jax.lax.rsqrt(mean_square + epsilon)
    if scale is not None:
        y = y * scale.astype(jnp.float32)
    return y.astype(x.dtype)
