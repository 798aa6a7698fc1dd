"""Position encodings as pure functions of explicit integer positions.

Dimension key: D encoding width (even).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_LAYOUTS = ("interleaved", "halves")


def sinusoidal_positions(
    positions: jax.Array,
    dim: int,
    *,
    max_timescale: float = 10_000.0,
    layout: str = "interleaved",
) -> jax.Array:
    """Sinusoidal encodings of "Attention is all you need".

    Channel pair i uses the angle  p / max_timescale**(2i / dim)  for i < dim/2.

    Args:
      positions: integer positions of any shape [...]; they may exceed any
        length seen in training (the formula extrapolates).
      dim: D, even.
      max_timescale: the 10000 of the paper.
      layout: "interleaved" puts sin at even and cos at odd channels, as in the
        paper: [sin0, cos0, sin1, cos1, ...]; "halves" concatenates all sines
        then all cosines: [sin0, sin1, ..., cos0, cos1, ...].

    Returns:
      float32 [..., D].
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even number; got {dim}")
    if layout not in _LAYOUTS:
        raise ValueError(f"layout must be one of {_LAYOUTS}; got {layout!r}")
    half = dim // 2
    inv_freq = max_timescale ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / dim)
    angles = jnp.asarray(positions, dtype=jnp.float32)[..., None] * inv_freq
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    if layout == "halves":
        return jnp.concatenate([sin, cos], axis=-1)
    return jnp.stack([sin, cos], axis=-1).reshape(*angles.shape[:-1], dim)
