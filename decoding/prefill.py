"""Prompts and the prefill call that every decoder starts with.

Dimension key: B batch, P prompt length, T tokens per step call, V vocab.

The decoders talk to a model only through a step function

    step_fn(tokens_BT, cache, positions_BT, context) -> (logits_BTV, cache)

`tokens_BT` and `positions_BT` are int32. Positions are each token's absolute position
in its own row, derived from the padding mask: the real prompt tokens of a row sit at
0, 1, 2, ... whatever padding comes before them, and padding tokens get position
`PAD_POSITION` (-1). A step function must keep a token at a negative position out of
every attention (the models' `decode_step` pass `valid_BT = positions_BT >= 0`). So a
batch of prompts of different lengths, left-padded, generates exactly what each prompt
would alone, for every position scheme.

The prompt is fed in one call (prefill); the next-token logits of each row are read at
its last real token. New tokens then go one per call: new token i of a row sits at
position n + i, where n is the row's number of real prompt tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flaxzoo.decoding.processors import seen_tokens

__all__ = ["StepFn", "PAD_POSITION", "left_pad", "prompt_positions", "prefill"]

StepFn = Callable[[jax.Array, Any, jax.Array, Any], tuple[jax.Array, Any]]
"""`step_fn(tokens_BT, cache, positions_BT, context) -> (logits_BTV, cache)`."""

PAD_POSITION = -1
"""The position a step function receives for a padding token."""


def left_pad(prompts: Sequence[Sequence[int]], *, pad_id: int = 0
             ) -> tuple[jax.Array, jax.Array]:
    """Token-id lists of different lengths as one left-padded batch.

    Returns:
      (prompt_BP int32, prompt_valid_BP bool), P the longest prompt's length.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("prompts must be a non-empty list of non-empty token-id lists")
    width = max(len(p) for p in prompts)
    rows = [[pad_id] * (width - len(p)) + [int(t) for t in p] for p in prompts]
    valid = [[False] * (width - len(p)) + [True] * len(p) for p in prompts]
    return jnp.asarray(rows, jnp.int32), jnp.asarray(valid, jnp.bool_)


def _check_prompt(prompt_BP: jax.Array, prompt_valid_BP: jax.Array | None
                  ) -> tuple[jax.Array, jax.Array]:
    """int32 prompt and bool validity, shapes checked; values checked when concrete."""
    prompt_BP = jnp.asarray(prompt_BP)
    if prompt_BP.ndim != 2 or prompt_BP.shape[0] < 1 or prompt_BP.shape[1] < 1:
        raise ValueError(
            f"prompt_BP must have shape [B, P] with B >= 1 and P >= 1; got shape {prompt_BP.shape}"
        )
    if not jnp.issubdtype(prompt_BP.dtype, jnp.integer):
        raise ValueError(f"prompt_BP must hold integer token ids; got dtype {prompt_BP.dtype}")
    if prompt_valid_BP is None:
        return prompt_BP.astype(jnp.int32), jnp.ones(prompt_BP.shape, jnp.bool_)
    prompt_valid_BP = jnp.asarray(prompt_valid_BP)
    if prompt_valid_BP.shape != prompt_BP.shape or prompt_valid_BP.dtype != jnp.bool_:
        raise ValueError(f"prompt_valid_BP must be bool of the prompt's shape {prompt_BP.shape}; "
                         f"got {prompt_valid_BP.dtype} {prompt_valid_BP.shape}")
    if not isinstance(prompt_valid_BP, jax.core.Tracer):
        has_token_B = prompt_valid_BP.any(axis=1)
        if not bool(has_token_B.all()):
            row = int(jnp.argmin(has_token_B))
            raise ValueError(f"prompt_valid_BP: row {row} has no real token; every "
                             f"prompt needs at least one")
    return prompt_BP.astype(jnp.int32), prompt_valid_BP


def prompt_positions(prompt_valid_BP: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Positions of the prompt tokens and the first new token's position.

    Args:
      prompt_valid_BP: bool [B, P], False for padding (anywhere in the row).

    Returns:
      (positions_BP int32: 0, 1, ... over the real tokens, PAD_POSITION on padding;
       next_position_B int32: the number of real tokens, where new token 0 goes).
    """
    valid_BP = jnp.asarray(prompt_valid_BP, jnp.bool_)
    count_BP = jnp.cumsum(valid_BP, axis=1, dtype=jnp.int32)
    positions_BP = jnp.where(valid_BP, count_BP - 1, PAD_POSITION).astype(jnp.int32)
    return positions_BP, count_BP[:, -1]


def _check_logits(logits_BTV: jax.Array, tokens_BT: jax.Array) -> None:
    shape = jnp.shape(logits_BTV)
    if len(shape) != 3 or shape[:2] != tokens_BT.shape:
        b, t = tokens_BT.shape
        raise ValueError(
            f"step_fn must return logits of shape [B, T, V] = [{b}, {t}, V] for tokens "
            f"of shape {tokens_BT.shape}; got shape {shape}"
        )
    if not jnp.issubdtype(jnp.result_type(logits_BTV), jnp.floating):
        raise ValueError(f"step_fn must return float logits; got {jnp.result_type(logits_BTV)}")
    if shape[2] < 2:
        raise ValueError(f"step_fn returned logits over {shape[2]} token(s); need V >= 2")


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def check_same_cache(cache_in: Any, cache_out: Any) -> None:
    """The loop carry must keep its type: same tree, shapes and dtypes."""
    spec_in, spec_out = _shapes(cache_in), _shapes(cache_out)
    if jax.tree.structure(spec_in) != jax.tree.structure(spec_out) or any(
        (a.shape, a.dtype) != (b.shape, b.dtype)
        for a, b in zip(jax.tree.leaves(spec_in), jax.tree.leaves(spec_out))
    ):
        raise ValueError(
            "step_fn must return a cache with the structure, shapes and dtypes of the "
            f"cache it was given; given {spec_in}, returned {spec_out}"
        )


def call_step(step_fn: StepFn, tokens_BT: jax.Array, cache: Any, positions_BT: jax.Array,
              context: Any) -> tuple[jax.Array, Any]:
    """One step call with its contract checked at trace time; float32 logits."""
    logits_BTV, new_cache = step_fn(tokens_BT, cache, positions_BT, context)
    _check_logits(logits_BTV, tokens_BT)
    check_same_cache(cache, new_cache)
    return logits_BTV.astype(jnp.float32), new_cache


def prefill(step_fn: StepFn, prompt_BP: jax.Array, prompt_valid_BP: jax.Array | None,
            cache: Any, context: Any) -> tuple[jax.Array, Any, jax.Array]:
    """Feeds the whole prompt in one call.

    Returns:
      (logits_BV float32 after each row's last real token, the cache holding the prompt,
       next_position_B int32: the position of new token 0 in each row).
    """
    prompt_BP, prompt_valid_BP = _check_prompt(prompt_BP, prompt_valid_BP)
    positions_BP, next_position_B = prompt_positions(prompt_valid_BP)
    logits_BPV, cache = call_step(step_fn, prompt_BP, cache, positions_BP, context)
    # The last real token of a row is the last column with the highest position.
    last_B = jnp.argmax(positions_BP, axis=1)
    logits_BV = jnp.take_along_axis(logits_BPV, last_B[:, None, None], axis=1)[:, 0]
    return logits_BV, cache, next_position_B


def seen_in_prompt(prompt_BP: jax.Array, prompt_valid_BP: jax.Array | None,
                   vocab_size: int) -> jax.Array:
    """bool [B, V]: the token ids among each row's real prompt tokens."""
    prompt_BP, prompt_valid_BP = _check_prompt(prompt_BP, prompt_valid_BP)
    return seen_tokens(prompt_BP, vocab_size, prompt_valid_BP)
