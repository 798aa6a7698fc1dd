"""Losses and input corruption for the training tasks: masked LM, classification, seq2seq.

Dimension key: B batch, T sequence length, V vocabulary, C classes.

Every loss returns sums and counts rather than means, so batches with different
amounts of padding average correctly when accumulated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mask_tokens(
    rng: jax.Array,
    tokens_BT: jax.Array,
    valid_BT: jax.Array,
    *,
    mask_id: int,
    vocab_size: int,
    special_ids: tuple[int, ...] = (),
    select_rate: float = 0.15,
    mask_fraction: float = 0.8,
    random_fraction: float = 0.1,
) -> tuple[jax.Array, jax.Array]:
    """BERT's masked-LM corruption.

    Each real, non-special token is selected with probability `select_rate`. A
    selected token becomes `mask_id` with probability `mask_fraction`, a uniformly
    random non-special token with probability `random_fraction`, and stays as it is
    otherwise (80/10/10 by default). The loss is taken on selected tokens only.

    Args:
      rng: PRNG key.
      tokens_BT: int [B, T], the original tokens (the targets).
      valid_BT: bool [B, T], False for padding (never selected).
      mask_id, vocab_size: the mask token and V.
      special_ids: ids never selected and never drawn as random replacements
        (padding, [CLS], [SEP], the mask itself, ...).

    Returns:
      (inputs int [B, T], selected bool [B, T]).
    """
    if not 0.0 < select_rate < 1.0:
        raise ValueError(f"select_rate must be in (0, 1); got {select_rate}")
    if not (0.0 <= mask_fraction and 0.0 <= random_fraction
            and mask_fraction + random_fraction <= 1.0):
        raise ValueError(f"mask_fraction ({mask_fraction}) and random_fraction "
                         f"({random_fraction}) must be >= 0 with a sum of at most 1")
    if not 0 <= mask_id < vocab_size:
        raise ValueError(f"mask_id must lie in [0, vocab_size={vocab_size}); got {mask_id}")
    special = jnp.asarray(sorted(set(special_ids) | {mask_id}), jnp.int32)
    is_special_BT = jnp.isin(tokens_BT, special)
    select_rng, action_rng, random_rng = jax.random.split(rng, 3)
    selected_BT = (jax.random.uniform(select_rng, tokens_BT.shape) < select_rate) & valid_BT
    selected_BT = selected_BT & ~is_special_BT
    action_BT = jax.random.uniform(action_rng, tokens_BT.shape)
    # Random replacements are drawn from the non-special ids only.
    allowed_V = ~jnp.isin(jnp.arange(vocab_size), special)
    random_BT = jax.random.categorical(random_rng, jnp.where(allowed_V, 0.0, -jnp.inf),
                                       shape=tokens_BT.shape)
    inputs_BT = jnp.where(action_BT < mask_fraction, mask_id,
                          jnp.where(action_BT < mask_fraction + random_fraction,
                                    random_BT, tokens_BT))
    return jnp.where(selected_BT, inputs_BT, tokens_BT).astype(tokens_BT.dtype), selected_BT


def token_cross_entropy(
    logits_BTV: jax.Array,
    targets_BT: jax.Array,
    weights_BT: jax.Array,
    *,
    label_smoothing: float = 0.0,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Cross-entropy over weighted (real, selected) tokens, optionally label-smoothed.

    With smoothing s the target distribution puts 1 - s on the target and s / V on
    every id (the convention of optax and PyTorch); padding has weight 0 and
    contributes nothing, not even smoothing mass.

    Returns:
      (sum of the smoothed loss, sum of the plain negative log-likelihood, sum of
      weights), all float32 scalars; loss / count is the mean to optimise and
      nll / count the mean to report.
    """
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1); got {label_smoothing}")
    log_probs_BTV = jax.nn.log_softmax(logits_BTV.astype(jnp.float32), axis=-1)
    nll_BT = -jnp.take_along_axis(log_probs_BTV, targets_BT[..., None], axis=-1)[..., 0]
    loss_BT = (1.0 - label_smoothing) * nll_BT - label_smoothing * log_probs_BTV.mean(-1)
    weights_BT = weights_BT.astype(jnp.float32)
    return (jnp.sum(loss_BT * weights_BT), jnp.sum(nll_BT * weights_BT), jnp.sum(weights_BT))


def classification_loss(logits_BC: jax.Array, labels_B: jax.Array
                        ) -> tuple[jax.Array, jax.Array]:
    """(sum of cross-entropy, number of correct argmax predictions) over the batch."""
    log_probs_BC = jax.nn.log_softmax(logits_BC.astype(jnp.float32), axis=-1)
    nll_B = -jnp.take_along_axis(log_probs_BC, labels_B[:, None], axis=-1)[:, 0]
    correct = jnp.sum(jnp.argmax(logits_BC, axis=-1) == labels_B)
    return jnp.sum(nll_B), correct.astype(jnp.float32)
