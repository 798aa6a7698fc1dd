"""ALiBi: attention with linear biases (Press et al., 2022).

Dimension key: B batch, N heads, T query length, S key/value length.

Instead of embedding positions, ALiBi adds  -slope[n] * distance  to the attention
logits of head n, where distance is how far the key lies from the query. Each head
has its own fixed slope (`alibi_slopes`), so some heads look far and some near.

Convention. With q and k the integer positions of a query and a key:
  causal         bias = slope * (k - q)      (= -slope * (q - k) for every k <= q)
  bidirectional  bias = -slope * |k - q|
The causal form is linear in k: for keys the causal mask hides (k > q) it is
positive, so it must be used together with a causal mask, as ALiBi always is.
Softmax is invariant to adding a constant to a row, so the causal form gives the
same attention weights as the cheaper  slope * k  that BLOOM and the paper's code
add (they differ by  -slope * q,  constant along each query's row).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from flaxzoo.layers.positions import relative_positions


def alibi_slopes(num_heads: int) -> jax.Array:
    """The head slopes of the ALiBi paper's reference code.

    For a power of two n the slopes are the geometric sequence
    2**(-8/n), 2**(-16/n), ..., 2**(-8).  For any other n, take the n' slopes of
    the largest power of two n' < n and append the first n - n' of the
    odd-numbered slopes (1st, 3rd, 5th, ...) of the 2n' case; those interleave
    between the existing ones.

    Args:
      num_heads: N >= 1.

    Returns:
      float32 [N].
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, (int, np.integer)) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int; got {num_heads!r}")

    def power_of_two_slopes(n: int) -> np.ndarray:
        start = 2.0 ** (-8.0 / n)
        return start ** np.arange(1, n + 1, dtype=np.float64)

    closest = 2 ** int(math.floor(math.log2(num_heads)))
    slopes = power_of_two_slopes(closest)
    if closest != num_heads:
        extra = power_of_two_slopes(2 * closest)[0::2][: num_heads - closest]
        slopes = np.concatenate([slopes, extra])
    return jnp.asarray(slopes, dtype=jnp.float32)


def alibi_bias(
    slopes_N: jax.Array,
    query_positions_BT: jax.Array,
    key_positions_BS: jax.Array,
    *,
    bidirectional: bool = False,
) -> jax.Array:
    """The additive ALiBi bias for `dot_product_attention(..., bias=...)`.

    Args:
      slopes_N: float [N], usually `alibi_slopes(N)`.
      query_positions_BT: integer positions of the queries, [T] or [B, T]. With a
        KV cache these are offset by the number of cached tokens.
      key_positions_BS: integer positions of the keys, [S] or [B, S].
      bidirectional: False (default) for the causal form slope * (k - q), which
        needs a causal mask; True for -slope * |k - q| (encoders).

    Returns:
      float32 [B, N, T, S], with B = 1 when neither position array has a batch.

    Raises:
      ValueError: if the slopes are not 1-D, the positions are not integers of
        rank 1 or 2, or the two position arrays have different batch sizes
        (a batch of 1 broadcasts).
    """
    slopes_N = jnp.asarray(slopes_N)
    if slopes_N.ndim != 1:
        raise ValueError(f"slopes must have shape [heads]; got {slopes_N.shape}")
    rel_BTS = relative_positions(query_positions_BT, key_positions_BS)
    if bidirectional:
        rel_BTS = -jnp.abs(rel_BTS)
    return slopes_N.astype(jnp.float32)[None, :, None, None] * rel_BTS[:, None].astype(jnp.float32)
