"""T5 relative-position buckets and the attention bias they index.

Dimension key:
  B batch, N heads, T query length, S key/value length,
  R relative-position buckets (T5 calls it `relative_attention_num_buckets`).

T5 maps the relative position  k - q  (key position minus query position) to one
of R buckets and learns one scalar per (bucket, head), added to the attention
logits. Small distances get one bucket each; larger ones share log-spaced buckets
up to `max_distance`; everything beyond shares the last bucket. Bidirectional
(encoder) attention gives half the buckets to keys before the query (and the
query itself) and half to keys after it; causal (decoder) attention only
distinguishes keys at or before the query (k > q all land in bucket 0, which the
causal mask hides anyway).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from flaxzoo.layers.positions import relative_positions


def _check_bucket_options(num_buckets: int, max_distance: int, bidirectional: bool) -> None:
    min_buckets = 4 if bidirectional else 2
    if num_buckets < min_buckets:
        raise ValueError(
            f"num_buckets must be >= {min_buckets} when bidirectional={bidirectional}; "
            f"got {num_buckets}"
        )
    one_side = num_buckets // 2 if bidirectional else num_buckets
    max_exact = one_side // 2
    if max_distance <= max_exact:
        raise ValueError(
            f"max_distance must exceed the exact range ({max_exact} for num_buckets="
            f"{num_buckets}, bidirectional={bidirectional}); got {max_distance}"
        )


def _one_side_buckets(num_buckets: int, max_distance: int) -> np.ndarray:
    """int32 [max_distance + 1]: the bucket of each distance 0..max_distance on one side.

    Built once in numpy with T5's float32 operations in T5's order. Doing this in
    jax instead would let XLA turn the division by the constant
    log(max_distance / max_exact) into a multiplication by its reciprocal, which
    rounds differently and moves a few distances that land exactly on a bucket
    boundary (e.g. distance 10 with max_exact 1, max_distance 100) one bucket down.
    Every distance >= max_distance is in the last bucket, so the table covers all.
    """
    max_exact = num_buckets // 2
    n = np.arange(max_distance + 1)
    n_large = np.maximum(n, max_exact).astype(np.float32)  # the others use the exact branch
    log_ratio = np.log(n_large / np.float32(max_exact)) / np.float32(
        math.log(max_distance / max_exact)
    )
    large = max_exact + (log_ratio * np.float32(num_buckets - max_exact)).astype(np.int64)
    large = np.minimum(large, num_buckets - 1)
    return np.where(n < max_exact, n, large).astype(np.int32)


def relative_position_bucket(
    relative_position: jax.Array,
    *,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> jax.Array:
    """T5's bucket of each relative position  k - q.

    With n = |k - q| (bidirectional) or n = max(q - k, 0) (causal), and R' the
    buckets for one side (R/2 when bidirectional, else R), max_exact = R'/2:
      n < max_exact:  bucket n
      otherwise:      max_exact + int(log(n / max_exact) / log(max_distance / max_exact)
                                      * (R' - max_exact)),  at most R' - 1
    computed in float32 as T5 does (so distances on a bucket boundary fall where
    T5's own float32 arithmetic puts them). Bidirectional adds R' for k > q.

    Args:
      relative_position: integers of any shape [...], key position minus query
        position.
      bidirectional: True for encoder (both directions) attention, False for
        causal decoder attention.
      num_buckets: R; >= 4 when bidirectional (each side gets R // 2, so an odd R
        leaves the last bucket unused, as in T5), >= 2 otherwise.
      max_distance: distances from here on share the last bucket of their side.

    Returns:
      int32 [...] in [0, R).
    """
    relative_position = jnp.asarray(relative_position)
    if not jnp.issubdtype(relative_position.dtype, jnp.integer):
        raise ValueError(
            f"relative_position must be integers; got dtype {relative_position.dtype}"
        )
    _check_bucket_options(num_buckets, max_distance, bidirectional)
    rel = relative_position.astype(jnp.int32)
    if bidirectional:
        num_buckets //= 2
        offset = jnp.where(rel > 0, num_buckets, 0).astype(jnp.int32)
        n = jnp.abs(rel)
    else:
        offset = jnp.zeros_like(rel)
        n = jnp.maximum(-rel, 0)
    bucket_of_distance = jnp.asarray(_one_side_buckets(num_buckets, max_distance))
    return offset + bucket_of_distance[jnp.minimum(n, max_distance)]


def relative_position_bias(
    table_RN: jax.Array,
    query_positions_BT: jax.Array,
    key_positions_BS: jax.Array,
    *,
    bidirectional: bool,
    num_buckets: int = 32,
    max_distance: int = 128,
) -> jax.Array:
    """The additive T5 bias for `dot_product_attention(..., bias=...)`.

    Args:
      table_RN: learned bias per bucket and head, [R, N], laid out as T5's
        `relative_attention_bias` embedding weight.
      query_positions_BT: integer positions of the queries, [T] or [B, T]. With a
        KV cache these are offset by the number of cached tokens.
      key_positions_BS: integer positions of the keys, [S] or [B, S].
      bidirectional, num_buckets, max_distance: as in `relative_position_bucket`;
        num_buckets must equal R.

    Returns:
      [B, N, T, S] in the dtype of the table, with B = 1 when neither position
      array has a batch.
    """
    table_RN = jnp.asarray(table_RN)
    if table_RN.ndim != 2 or table_RN.shape[0] != num_buckets:
        raise ValueError(
            f"table must have shape [num_buckets, heads] with num_buckets={num_buckets}; "
            f"got {table_RN.shape}"
        )
    buckets_BTS = relative_position_bucket(
        relative_positions(query_positions_BT, key_positions_BS),
        bidirectional=bidirectional,
        num_buckets=num_buckets,
        max_distance=max_distance,
    )
    bias_BTSN = table_RN[buckets_BTS]
    return jnp.transpose(bias_BTSN, (0, 3, 1, 2))
