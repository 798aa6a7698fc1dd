"""Boolean attention masks (True = may attend) that combine with `&`.

Dimension key: B batch, N heads, T query length, S key/value length.

Every mask broadcasts to [B, N, T, S], the shape `dot_product_attention` expects.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def causal_mask(
    q_len: int, kv_len: int | None = None, *, offset: int | jax.Array | None = None
) -> jax.Array:
    """Query i may attend key j iff j <= offset + i.

    Args:
      q_len: T, number of queries.
      kv_len: S, number of keys; defaults to T.
      offset: position of the first query among the keys. By default the query
        block is aligned to the end of the keys (offset = S - T), which is the
        usual case when decoding with a cache. An int (or scalar array) gives a
        [T, S] mask; an int array of shape [B] (one offset per row) gives
        [B, 1, T, S].

    Returns:
      bool [T, S], or [B, 1, T, S] for per-row offsets.
    """
    if kv_len is None:
        kv_len = q_len
    if q_len < 1 or kv_len < 1:
        raise ValueError(f"q_len and kv_len must be >= 1; got q_len={q_len}, kv_len={kv_len}")
    if offset is None:
        if kv_len < q_len:
            raise ValueError(
                f"without an offset, kv_len ({kv_len}) must be >= q_len ({q_len})"
            )
        offset = kv_len - q_len
    offset = jnp.asarray(offset, dtype=jnp.int32)
    if offset.ndim > 1:
        raise ValueError(f"offset must be a scalar or shape [batch]; got shape {offset.shape}")
    q_pos_T = jnp.arange(q_len, dtype=jnp.int32)
    k_pos_S = jnp.arange(kv_len, dtype=jnp.int32)
    if offset.ndim == 0:
        return k_pos_S[None, :] <= (offset + q_pos_T)[:, None]
    q_pos_BT = offset[:, None] + q_pos_T[None, :]
    return (k_pos_S[None, None, :] <= q_pos_BT[:, :, None])[:, None, :, :]


def padding_mask(
    kv_valid: jax.Array, q_valid: jax.Array | None = None
) -> jax.Array:
    """Mask out padding tokens.

    Args:
      kv_valid: bool [B, S], True for real key tokens.
      q_valid: optional bool [B, T], True for real query tokens; padded queries
        then attend nothing (their output is zero).

    Returns:
      bool [B, 1, 1, S], or [B, 1, T, S] when `q_valid` is given.
    """
    kv_valid = jnp.asarray(kv_valid)
    if kv_valid.ndim != 2:
        raise ValueError(f"kv_valid must have shape [batch, kv_len]; got {kv_valid.shape}")
    kv_valid = kv_valid.astype(jnp.bool_)
    if q_valid is None:
        return kv_valid[:, None, None, :]
    q_valid = jnp.asarray(q_valid).astype(jnp.bool_)
    if q_valid.ndim != 2 or q_valid.shape[0] != kv_valid.shape[0]:
        raise ValueError(
            f"q_valid must have shape [batch, q_len] with batch {kv_valid.shape[0]}; "
            f"got {q_valid.shape}"
        )
    return q_valid[:, None, :, None] & kv_valid[:, None, None, :]
