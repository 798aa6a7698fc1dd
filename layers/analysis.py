"""Attention analysis: per-row entropy and attention rollout, as pure functions.

Dimension key: L layers, B batch, N heads, T query length, S key/value length
(T == S for the self-attention that rollout composes).

Both take attention weights as `dot_product_attention(..., return_weights=True)`
and the models give them: probabilities over keys, [B, N, T, S] per layer.
Results are float32 whatever the weights' dtype.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

HEAD_REDUCTIONS = ("mean", "max", "min")
"""Values accepted by `attention_rollout(head_reduction=...)`."""


def attention_entropy(weights_BNTS: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
    """Shannon entropy, in nats, of each attention row: -sum_j p_j log p_j.

    A row spread evenly over n keys has entropy log n; a row on a single key
    has entropy 0. Terms with p_j == 0 contribute 0 (0 log 0 = 0), and their
    gradient is 0 rather than NaN.

    Args:
      weights_BNTS: attention probabilities [B, N, T, S], each row summing to 1
        over its visible keys (not checked, so it works on traced values).
      mask: optional bool (True = attended) broadcastable to [B, N, T, S]; keys
        where it is False are left out of the sum, and a fully masked row has
        entropy 0. Not needed for weights whose masked entries are already 0.

    Returns:
      float32 [B, N, T].
    """
    weights_BNTS = jnp.asarray(weights_BNTS)
    if weights_BNTS.ndim != 4:
        raise ValueError(
            f"weights_BNTS must have shape [batch, heads, q_len, kv_len]; "
            f"got shape {weights_BNTS.shape}"
        )
    p_BNTS = weights_BNTS.astype(jnp.float32)
    keep_BNTS = p_BNTS > 0
    if mask is not None:
        mask = jnp.asarray(mask)
        if mask.dtype != jnp.bool_:
            raise ValueError(f"mask must be boolean (True = attended); got dtype {mask.dtype}")
        if not _broadcasts(mask.shape, weights_BNTS.shape):
            raise ValueError(
                f"mask of shape {mask.shape} does not broadcast to weights_BNTS "
                f"[batch, heads, q_len, kv_len] = {weights_BNTS.shape}"
            )
        keep_BNTS = keep_BNTS & mask
    # log of 1 where the term is dropped keeps both value and gradient finite.
    log_p_BNTS = jnp.log(jnp.where(keep_BNTS, p_BNTS, 1.0))
    return -jnp.sum(jnp.where(keep_BNTS, p_BNTS * log_p_BNTS, 0.0), axis=-1)


def attention_rollout(
    weights_per_layer: Sequence[jax.Array] | jax.Array,
    *,
    residual: bool = True,
    head_reduction: str = "mean",
) -> jax.Array:
    """Attention rollout (Abnar & Zuidema 2020): how much each output token draws
    on each input token through the stack of self-attention layers.

    For each layer l the heads are reduced to one [T, T] matrix W_l; with
    `residual`, the skip connection is modelled as A_l = 0.5 W_l + 0.5 I,
    otherwise A_l = W_l; the rows of A_l are then renormalised to sum to 1
    (a no-op for head-averaged softmax weights, needed after "max"/"min"; an
    all-zero row stays zero). The rollout is the product from the first layer
    up: R = A_L @ ... @ A_2 @ A_1, so R[b, t, s] is the share of input token s
    in output token t.

    Args:
      weights_per_layer: attention weights of each layer, first layer first:
        a sequence of L arrays [B, N, T, T], or one stacked array
        [L, B, N, T, T].
      residual: add the identity for the residual connection.
      head_reduction: "mean", "max" or "min" over the N heads.

    Returns:
      float32 [B, T, T]; with `residual` (or with rows of W summing to 1) each
      row sums to 1.
    """
    if head_reduction not in HEAD_REDUCTIONS:
        raise ValueError(
            f"head_reduction must be one of {HEAD_REDUCTIONS}; got {head_reduction!r}"
        )
    if isinstance(weights_per_layer, (list, tuple)):
        if not weights_per_layer:
            raise ValueError("weights_per_layer must hold at least one layer; got none")
        layers = [jnp.asarray(w) for w in weights_per_layer]
        for index, w in enumerate(layers):
            if w.ndim != 4:
                raise ValueError(
                    f"weights_per_layer[{index}] must have shape [batch, heads, T, T]; "
                    f"got shape {w.shape}"
                )
            if w.shape != layers[0].shape:
                raise ValueError(
                    f"weights_per_layer must all have one shape; weights_per_layer[0] "
                    f"has {layers[0].shape}, weights_per_layer[{index}] has {w.shape}"
                )
        weights_LBNTS = jnp.stack(layers)
    else:
        weights_LBNTS = jnp.asarray(weights_per_layer)
        if weights_LBNTS.ndim != 5:
            raise ValueError(
                f"weights_per_layer must be a list of [batch, heads, T, T] arrays or "
                f"one array [layers, batch, heads, T, T]; got shape {weights_LBNTS.shape}"
            )
        if weights_LBNTS.shape[0] == 0:
            raise ValueError("weights_per_layer must hold at least one layer; got none")
    num_layers, batch, _, q_len, kv_len = weights_LBNTS.shape
    if q_len != kv_len:
        raise ValueError(
            f"weights_per_layer must be self-attention weights with q_len == kv_len; "
            f"got per-layer shape {weights_LBNTS.shape[1:]}"
        )

    reduce = {"mean": jnp.mean, "max": jnp.max, "min": jnp.min}[head_reduction]
    a_LBTS = reduce(weights_LBNTS.astype(jnp.float32), axis=2)
    if residual:
        a_LBTS = 0.5 * a_LBTS + 0.5 * jnp.eye(q_len, dtype=jnp.float32)
    row_sum_LBT1 = jnp.sum(a_LBTS, axis=-1, keepdims=True)
    a_LBTS = a_LBTS / jnp.where(row_sum_LBT1 > 0, row_sum_LBT1, 1.0)

    def step(rollout_BTS, a_BTS):
        # Full float32 products: TPU/GPU default matmul precision would round
        # the probabilities to bfloat16/TF32 at every layer.
        rollout_BTS = jnp.einsum(
            "BTU,BUS->BTS", a_BTS, rollout_BTS, precision=jax.lax.Precision.HIGHEST
        )
        return rollout_BTS, None

    eye_BTS = jnp.broadcast_to(jnp.eye(q_len, dtype=jnp.float32), (batch, q_len, q_len))
    rollout_BTS, _ = jax.lax.scan(step, eye_BTS, a_LBTS, length=num_layers)
    return rollout_BTS


def _broadcasts(shape: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """Whether an array of `shape` broadcasts to `target` without changing it."""
    if len(shape) > len(target):
        return False
    return all(got in (1, want) for got, want in zip(shape[::-1], target[::-1]))
