"""Position encodings as pure functions of explicit integer positions.

Dimension key: B batch, T query length, S key length, D encoding width (even).
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


def _positions_as_rows(name: str, positions: jax.Array) -> jax.Array:
    """[L] or [B, L] integer positions -> int32 [1 or B, L]."""
    positions = jnp.asarray(positions)
    if not jnp.issubdtype(positions.dtype, jnp.integer):
        raise ValueError(f"{name} must be integers; got dtype {positions.dtype}")
    if positions.ndim == 1:
        positions = positions[None, :]
    elif positions.ndim != 2:
        raise ValueError(
            f"{name} must have shape [length] or [batch, length]; got {positions.shape}"
        )
    return positions.astype(jnp.int32)


def relative_positions(
    query_positions_BT: jax.Array, key_positions_BS: jax.Array
) -> jax.Array:
    """Key position minus query position for every (query, key) pair.

    The quantity ALiBi and T5 relative bias are functions of; exact in int32.

    Args:
      query_positions_BT: integer positions of the queries, [T] or [B, T]. With a
        KV cache these are offset by the number of cached tokens.
      key_positions_BS: integer positions of the keys, [S] or [B, S].

    Returns:
      int32 [B, T, S] with entry k - q, B = 1 when neither array has a batch (a
      batch of 1 broadcasts against the other).
    """
    q_pos_BT = _positions_as_rows("query_positions", query_positions_BT)
    k_pos_BS = _positions_as_rows("key_positions", key_positions_BS)
    q_batch, k_batch = q_pos_BT.shape[0], k_pos_BS.shape[0]
    if q_batch != k_batch and 1 not in (q_batch, k_batch):
        raise ValueError(
            "query_positions and key_positions must have the same batch size (or one "
            f"of them none); got shapes {jnp.shape(query_positions_BT)} and "
            f"{jnp.shape(key_positions_BS)}"
        )
    return k_pos_BS[:, None, :] - q_pos_BT[:, :, None]
