"""Scaled dot-product attention as one pure function with swappable backends.

Dimension key:
  B batch, T query length, S key/value length,
  N query heads, K key/value heads, G = N // K query heads per key/value head,
  H query/key head dim, Hv value head dim.

Multi-head (K == N), grouped-query (1 < K < N) and multi-query (K == 1) attention
share one code path: query heads are grouped as [K, G] and each group reads the
same key/value head.

`dot_product_attention` validates its arguments once, folds `is_causal` into the
mask, then hands the work to a backend named by `implementation`. Backends are
entries of `_BACKENDS` with one signature, so a blockwise (FlashAttention-style)
path or a vendor kernel is one more function and one more entry.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from flaxzoo.layers.masks import causal_mask

# Masked logits get a large negative *finite* value so that a row whose every key
# is masked still has a well-defined softmax (we zero that row afterwards).
_MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)


def _check_broadcast(name: str, shape: tuple[int, ...], target: tuple[int, ...]) -> None:
    """Raises ValueError if `shape` does not broadcast to `target` ([B, N, T, S])."""
    if len(shape) > len(target):
        raise ValueError(
            f"{name} must broadcast to [batch, heads, q_len, kv_len] = {target}; "
            f"got shape {shape} with rank {len(shape)} > 4"
        )
    for got, want in zip(shape[::-1], target[::-1]):
        if got not in (1, want):
            raise ValueError(
                f"{name} of shape {shape} does not broadcast to "
                f"[batch, heads, q_len, kv_len] = {target}"
            )


def _check_shapes(query, key, value) -> None:
    for name, arr in (("query", query), ("key", key), ("value", value)):
        if arr.ndim != 4:
            raise ValueError(
                f"{name} must have rank 4 [batch, length, heads, head_dim]; got shape {arr.shape}"
            )
    batch, _, num_heads, head_dim = query.shape
    k_batch, kv_len, num_kv_heads, k_head_dim = key.shape
    v_batch, v_len, v_heads, _ = value.shape
    if k_batch != batch or v_batch != batch:
        raise ValueError(
            f"batch sizes differ: query {query.shape}, key {key.shape}, value {value.shape}"
        )
    if k_head_dim != head_dim:
        raise ValueError(
            f"key head_dim must equal query head_dim: query {query.shape}, key {key.shape}"
        )
    if v_len != kv_len or v_heads != num_kv_heads:
        raise ValueError(
            f"value must match key in length and heads: key {key.shape}, value {value.shape}"
        )
    if num_heads % num_kv_heads != 0:
        raise ValueError(
            f"query heads ({num_heads}) must be a multiple of key/value heads "
            f"({num_kv_heads}): query {query.shape}, key {key.shape}"
        )


IMPLEMENTATIONS = ("xla", "jax_nn")
"""Names accepted by `implementation` (None picks "xla")."""


def dot_product_attention(
    query: jax.Array,
    key: jax.Array,
    value: jax.Array,
    *,
    mask: jax.Array | None = None,
    bias: jax.Array | None = None,
    scale: float | None = None,
    is_causal: bool = False,
    dropout_rate: float = 0.0,
    dropout_rng: jax.Array | None = None,
    return_weights: bool = False,
    implementation: str | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """softmax(scale * q k^T + bias, masked) v.

    Args:
      query: [B, T, N, H].
      key: [B, S, K, H], with N % K == 0.
      value: [B, S, K, Hv].
      mask: optional boolean, True = may attend, broadcastable to [B, N, T, S].
      bias: optional additive float, broadcastable to [B, N, T, S] (per-head
        biases such as ALiBi or T5 relative positions are [1, N, T, S]).
      scale: multiplies the logits; defaults to 1 / sqrt(H).
      is_causal: also mask keys after each query, with the query block aligned
        to the end of the keys (query i sits at key position S - T + i), as
        `causal_mask(T, S)` builds it. Combined with `mask` by `&`.
      dropout_rate: probability of dropping each attention weight; the kept
        weights are divided by 1 - rate so the expected output is unchanged.
        0 is exactly the deterministic path.
      dropout_rng: PRNG key for dropout; required when dropout_rate > 0.
      return_weights: also return the attention weights.
      implementation: None or "xla" for flaxzoo's own einsum path;
        "jax_nn" for `jax.nn.dot_product_attention` (which takes no dropout,
        returns no weights and needs Hv == H and one dtype for q, k, v).

    Returns:
      out [B, T, N, Hv] in the query dtype, and with `return_weights` also
      weights [B, N, T, S] (float32): the weights the values were mixed with,
      after dropout when dropout is on. A query row whose every key is masked
      gets zero weights, a zero output and zero gradients.
    """
    _check_shapes(query, key, value)
    batch, q_len, num_heads, _ = query.shape
    kv_len = key.shape[1]
    target = (batch, num_heads, q_len, kv_len)
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be boolean (True = attend); got dtype {mask.dtype}")
        _check_broadcast("mask", mask.shape, target)
    if bias is not None:
        bias = jnp.asarray(bias)
        if not jnp.issubdtype(bias.dtype, jnp.floating):
            raise ValueError(f"bias must be a float array; got dtype {bias.dtype}")
        _check_broadcast("bias", bias.shape, target)
    if scale is None:
        scale = 1.0 / math.sqrt(query.shape[-1])
    _check_dropout(dropout_rate, dropout_rng)
    if implementation is None:
        implementation = "xla"
    if implementation not in _BACKENDS:
        raise ValueError(
            f"implementation must be None or one of {IMPLEMENTATIONS}; got {implementation!r}"
        )
    if is_causal:
        if kv_len < q_len:
            raise ValueError(
                f"is_causal needs kv_len >= q_len (queries aligned to the end of the keys); "
                f"got query {query.shape}, key {key.shape}"
            )
        causal_TS = causal_mask(q_len, kv_len)
        mask = causal_TS if mask is None else mask & causal_TS
    out_BTNH, weights_BNTS = _BACKENDS[implementation](
        query, key, value, mask=mask, bias=bias, scale=scale, dropout_rate=dropout_rate,
        dropout_rng=dropout_rng, return_weights=return_weights,
    )
    if return_weights:
        return out_BTNH, weights_BNTS
    return out_BTNH


def _check_dropout(dropout_rate, dropout_rng) -> None:
    if isinstance(dropout_rate, bool) or not isinstance(dropout_rate, (int, float)):
        raise ValueError(f"dropout_rate must be a Python float in [0, 1); got {dropout_rate!r}")
    if not 0.0 <= dropout_rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate}")
    if dropout_rate > 0.0 and dropout_rng is None:
        raise ValueError(f"dropout_rate={dropout_rate} needs a dropout_rng key")


def _xla_attention(query, key, value, *, mask, bias, scale, dropout_rate, dropout_rng,
                   return_weights):
    """flaxzoo's own path: two einsums around a float32 softmax."""
    del return_weights  # the weights exist anyway
    batch, q_len, num_heads, head_dim = query.shape
    _, kv_len, num_kv_heads, _ = key.shape
    groups = num_heads // num_kv_heads
    target = (batch, num_heads, q_len, kv_len)

    # Heads-major layouts ([B, K, G, T, H] and [B, K, S, H]) make every einsum a
    # plain batched matmul; contracting the [B, T, N, H] layout directly is about
    # 2x slower on CPU.
    q_BKGTH = query.reshape(batch, q_len, num_kv_heads, groups, head_dim).transpose(0, 2, 3, 1, 4)
    k_BKSH = key.transpose(0, 2, 1, 3)
    v_BKSH = value.transpose(0, 2, 1, 3)
    logits_BKGTS = jnp.einsum(
        "BKGTH,BKSH->BKGTS", q_BKGTH, k_BKSH, preferred_element_type=jnp.float32
    )
    logits_BNTS = logits_BKGTS.reshape(target) * jnp.float32(scale)
    if bias is not None:
        logits_BNTS = logits_BNTS + bias.astype(jnp.float32)
    if mask is not None:
        mask_BNTS = jnp.broadcast_to(mask, target)
        logits_BNTS = jnp.where(mask_BNTS, logits_BNTS, _MASK_VALUE)
    weights_BNTS = jax.nn.softmax(logits_BNTS, axis=-1)
    if mask is not None:
        # Rows with no visible key would otherwise spread weight uniformly over
        # masked keys; zeroing keeps both values and gradients at zero there.
        weights_BNTS = jnp.where(mask_BNTS, weights_BNTS, 0.0)
    if dropout_rate > 0.0:
        keep_BNTS = jax.random.bernoulli(dropout_rng, 1.0 - dropout_rate, target)
        weights_BNTS = jnp.where(keep_BNTS, weights_BNTS / (1.0 - dropout_rate), 0.0)

    weights_BKGTS = weights_BNTS.reshape(batch, num_kv_heads, groups, q_len, kv_len)
    out_BKGTH = jnp.einsum(
        "BKGTS,BKSH->BKGTH",
        weights_BKGTS.astype(value.dtype),
        v_BKSH,
        preferred_element_type=jnp.float32,
    )
    out_BTNH = (
        out_BKGTH.transpose(0, 3, 1, 2, 4)
        .reshape(batch, q_len, num_heads, value.shape[-1])
        .astype(query.dtype)
    )
    return out_BTNH, weights_BNTS


def _jax_nn_attention(query, key, value, *, mask, bias, scale, dropout_rate, dropout_rng,
                      return_weights):
    """`jax.nn.dot_product_attention` (XLA, or cuDNN where jax picks it)."""
    del dropout_rng
    for name, unsupported in (("dropout", dropout_rate > 0.0),
                              ("return_weights", return_weights),
                              ("value head_dim != key head_dim",
                               value.shape[-1] != key.shape[-1]),
                              ("mixed query/key/value dtypes",
                               len({query.dtype, key.dtype, value.dtype}) > 1)):
        if unsupported:
            raise ValueError(f'implementation="jax_nn" does not support {name}; '
                             f'use implementation="xla"')
    batch, q_len, num_heads, _ = query.shape
    target = (batch, num_heads, q_len, key.shape[1])
    mask_BNTS = None if mask is None else jnp.broadcast_to(mask, target)
    bias_BNTS = None if bias is None else jnp.broadcast_to(bias, target).astype(query.dtype)
    out_BTNH = jax.nn.dot_product_attention(query, key, value, bias=bias_BNTS, mask=mask_BNTS,
                                            scale=scale)
    if mask_BNTS is not None:
        # jax.nn spreads a fully masked row uniformly; flaxzoo's contract is zeros.
        row_has_key_BTN1 = jnp.any(mask_BNTS, axis=-1).transpose(0, 2, 1)[..., None]
        out_BTNH = jnp.where(row_has_key_BTN1, out_BTNH, jnp.zeros((), out_BTNH.dtype))
    return out_BTNH, None


_BACKENDS = {"xla": _xla_attention, "jax_nn": _jax_nn_attention}
