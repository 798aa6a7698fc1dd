"""Boolean attention masks (True = may attend) that combine with `&`.

Dimension key: B batch, N heads, T query length, S key/value length.

Every mask broadcasts to [B, N, T, S], the shape `dot_product_attention` expects.
"""

from __future__ import annotations

import operator

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
    q_pos = _query_positions(q_len, kv_len, offset)  # [T] or [B, T]
    k_pos_S = jnp.arange(kv_len, dtype=jnp.int32)
    mask = k_pos_S <= q_pos[..., :, None]  # [T, S] or [B, T, S]
    return mask if mask.ndim == 2 else mask[:, None, :, :]


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


def _query_positions(q_len: int, kv_len: int, offset) -> jax.Array:
    """Absolute query positions: int32 [T], or [B, T] for a per-row offset [B].

    Validates the lengths and the offset the way `causal_mask` does.
    """
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
    if offset.ndim == 0:
        return offset + q_pos_T
    return offset[:, None] + q_pos_T[None, :]


def sliding_window_mask(
    q_len: int,
    kv_len: int | None = None,
    *,
    window: int,
    offset: int | jax.Array | None = None,
    symmetric: bool = False,
) -> jax.Array:
    """Local attention: each query sees only the keys within `window` of it.

    With p = offset + i the absolute position of query i, query i may attend
    key j iff

      causal (default):  0 <= p - j < window
      symmetric=True:    |p - j| < window

    The window counts the query's own position: window=1 sees only the key at
    the query's position, window=w sees that key and the w - 1 keys before it
    (the convention of Hugging Face transformers' `sliding_window`, used by
    Mistral and Gemma 2: key j visible iff j > p - window, on top of causal).
    The symmetric form (for encoders) sees w - 1 keys on each side, 2w - 1 in
    all. The causal form is already causal, so `& causal_mask(...)` is
    harmless; combine with `padding_mask` or `segment_mask` with `&`.

    Args:
      q_len: T, number of queries.
      kv_len: S, number of keys; defaults to T.
      window: int >= 1, static (it is part of the mask's structure, not data).
      offset: position of the first query among the keys, exactly as in
        `causal_mask`: by default the query block is aligned to the end of the
        keys (offset = S - T); an int or scalar array gives a [T, S] mask; an
        int array of shape [B] (one offset per row) gives [B, 1, T, S]. The
        offset may be a traced value under `jax.jit`.
      symmetric: look both ways instead of only back.

    Returns:
      bool [T, S], or [B, 1, T, S] for per-row offsets.
    """
    try:
        window = operator.index(window)
    except TypeError:
        raise ValueError(f"window must be an int >= 1; got {window!r}") from None
    if window < 1:
        raise ValueError(f"window must be an int >= 1; got window={window}")
    if kv_len is None:
        kv_len = q_len
    q_pos = _query_positions(q_len, kv_len, offset)  # [T] or [B, T]
    k_pos_S = jnp.arange(kv_len, dtype=jnp.int32)
    delta = q_pos[..., :, None] - k_pos_S  # [T, S] or [B, T, S]: p - j
    if symmetric:
        mask = jnp.abs(delta) < window
    else:
        mask = (delta >= 0) & (delta < window)
    return mask if mask.ndim == 2 else mask[:, None, :, :]


def segment_mask(
    q_segment_ids: jax.Array,
    kv_segment_ids: jax.Array | None = None,
    *,
    padding_id: int | None = None,
) -> jax.Array:
    """Keep packed sequences apart: a query sees only keys of its own segment.

    Several sequences packed into one row carry segment ids (1, 1, 1, 2, 2, 3,
    ...); query i may attend key j iff their ids are equal. Combine with
    `causal_mask` with `&` for packed decoder-only training.

    Padding: by default (padding_id=None) ids are compared and nothing else, so
    padding tokens that share an id attend only one another and real tokens
    never see them (no row is fully masked). With padding_id=0 (the usual
    convention of packed-data pipelines), tokens whose id is 0 neither attend
    nor are attended: their rows are fully masked, and attention returns zeros
    there.

    Args:
      q_segment_ids: integer [B, T].
      kv_segment_ids: integer [B, S]; defaults to `q_segment_ids`
        (self-attention).
      padding_id: an id that marks padding, or None for plain equality.

    Returns:
      bool [B, 1, T, S].
    """
    q_ids_BT = jnp.asarray(q_segment_ids)
    kv_ids_BS = q_ids_BT if kv_segment_ids is None else jnp.asarray(kv_segment_ids)
    for name, ids in (("q_segment_ids", q_ids_BT), ("kv_segment_ids", kv_ids_BS)):
        if ids.ndim != 2:
            raise ValueError(f"{name} must have shape [batch, length]; got shape {ids.shape}")
        if not jnp.issubdtype(ids.dtype, jnp.integer):
            raise ValueError(f"{name} must hold integer ids; got dtype {ids.dtype}")
    if kv_ids_BS.shape[0] != q_ids_BT.shape[0]:
        raise ValueError(
            f"kv_segment_ids must have shape [batch, kv_len] with batch "
            f"{q_ids_BT.shape[0]} (from q_segment_ids {q_ids_BT.shape}); "
            f"got {kv_ids_BS.shape}"
        )
    mask_BTS = q_ids_BT[:, :, None] == kv_ids_BS[:, None, :]
    if padding_id is not None:
        q_real_BT = q_ids_BT != padding_id
        kv_real_BS = kv_ids_BS != padding_id
        mask_BTS = mask_BTS & q_real_BT[:, :, None] & kv_real_BS[:, None, :]
    return mask_BTS[:, None, :, :]
