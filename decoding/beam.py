"""Beam search: prefill once, then one loop that keeps W live and W finished hypotheses per row.

Dimension key: B batch, W beams (beam_size), K = min(2W, W V) candidates, L new tokens
(max_new_tokens), P prompt length, V vocab.

Each step scores every one-token extension of every live hypothesis by its summed
log-probability and keeps the K best of the row. Among the first W of those, the ones
that end in EOS (all of them at the last step, L) finish: they enter the row's pool of
W finished hypotheses if their length-normalised score beats its worst (see
`BeamSearchConfig`). The W best that do not end in EOS stay live. Taking K = 2W
candidates guarantees W live ones however many finish. A row is done when even its
best live hypothesis, at the most favourable length still reachable, cannot beat the
worst finished one; then nothing can change its pool. These are transformers' rules
(with `early_stopping="never"`), so the two give the same hypotheses.

The prompt is prefilled once at batch B; then the cache and `context` are tiled to
B * W rows (row b's beams are rows b W ... b W + W - 1), and after every step the cache
rows are gathered to follow their hypotheses. Every leaf of the cache and the context
is either a scalar shared by all rows or has the batch as its leading axis.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from flaxzoo.decoding.config import BeamSearchConfig, length_penalty
from flaxzoo.decoding.prefill import StepFn, call_step, prefill
from flaxzoo.decoding.processors import suppress_token
from flaxzoo.decoding.sampling import _check_vocab, run_loop

__all__ = ["BeamState", "BeamSearchOutput", "beam_search", "add_beam_dim", "gather_beams"]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["cache", "live_tokens_BWL", "live_log_probs_BW", "finished_tokens_BWL",
                 "finished_scores_BW", "finished_log_probs_BW", "finished_lengths_BW",
                 "done_B", "num_generated"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class BeamState:
    """Carry of the beam-search loop.

    Attributes:
      cache: the step function's cache at batch B * W, one row per live hypothesis,
        holding every token but its last.
      live_tokens_BWL: int32 [B, W, L], live hypotheses' new tokens (pad after).
      live_log_probs_BW: float32 [B, W], their summed log-probabilities, best first.
      finished_tokens_BWL: int32 [B, W, L], finished hypotheses (pad after EOS).
      finished_scores_BW: float32 [B, W], their normalised scores, best first; -inf
        marks an empty slot.
      finished_log_probs_BW: float32 [B, W], their summed log-probabilities.
      finished_lengths_BW: int32 [B, W], their lengths in new tokens (EOS included).
      done_B: bool [B], no live hypothesis can still enter the row's finished pool.
      num_generated: int32 scalar, the live hypotheses' length.
    """

    cache: Any
    live_tokens_BWL: jax.Array
    live_log_probs_BW: jax.Array
    finished_tokens_BWL: jax.Array
    finished_scores_BW: jax.Array
    finished_log_probs_BW: jax.Array
    finished_lengths_BW: jax.Array
    done_B: jax.Array
    num_generated: jax.Array


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["tokens_BWL", "scores_BW", "log_probs_BW", "lengths_BW"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class BeamSearchOutput:
    """The n-best list of each row, best first.

    tokens_BWL: int32 [B, W, L] new tokens (pad after EOS); scores_BW: float32 [B, W]
    length-normalised scores (what the ranking uses); log_probs_BW: float32 [B, W]
    summed log-probabilities; lengths_BW: int32 [B, W] new tokens, EOS included.
    A row with fewer than W possible hypotheses (a tiny vocabulary) fills the rest
    with score -inf.
    """

    tokens_BWL: jax.Array
    scores_BW: jax.Array
    log_probs_BW: jax.Array
    lengths_BW: jax.Array


def add_beam_dim(tree: Any, beam_size: int, *, batch_size: int, name: str = "tree") -> Any:
    """Repeats every batch-major leaf W times along axis 0: [B, ...] -> [B * W, ...].

    Scalars are shared and stay as they are; any other leaf must lead with B.
    """
    def tile(x):
        x = jnp.asarray(x)
        if x.ndim == 0:
            return x
        if x.shape[0] != batch_size:
            raise ValueError(f"{name}: every leaf must be a scalar or lead with the batch size "
                             f"{batch_size}; got a leaf of shape {x.shape}")
        return jnp.repeat(x, beam_size, axis=0)

    return jax.tree.map(tile, tree)


def gather_beams(tree: Any, parent_BW: jax.Array) -> Any:
    """Rows [B * W, ...] of every non-scalar leaf, reordered so that row (b, w) is the
    old row (b, parent_BW[b, w])."""
    batch, beams = parent_BW.shape
    flat_index = (jnp.arange(batch)[:, None] * beams + parent_BW).reshape(-1)
    return jax.tree.map(lambda x: x if jnp.ndim(x) == 0 else x[flat_index], tree)


def _take(x_BK, index_BW):
    """x[b, index[b, w]] for x of shape [B, K, ...]."""
    index = index_BW.reshape(index_BW.shape + (1,) * (x_BK.ndim - 2))
    return jnp.take_along_axis(x_BK, index, axis=1)


def _log_probs(logits_BWV: jax.Array, state: BeamState, config: BeamSearchConfig) -> jax.Array:
    """log-softmax of the logits, then EOS held back until min_new_tokens (transformers
    applies its processors to the log-probabilities, without renormalising)."""
    log_probs_BWV = jax.nn.log_softmax(logits_BWV.astype(jnp.float32), axis=-1)
    if config.min_new_tokens > 0:
        b, w, v = log_probs_BWV.shape
        log_probs_BWV = suppress_token(log_probs_BWV.reshape(b * w, v), config.eos_id,
                                       state.num_generated < config.min_new_tokens
                                       ).reshape(b, w, v)
    return log_probs_BWV


def _advance(state: BeamState, log_probs_BWV: jax.Array, config: BeamSearchConfig
             ) -> tuple[BeamState, jax.Array]:
    """One step of the search given the next-token log-probs of the live hypotheses.

    Returns the new state (its cache not yet reordered) and parent_BW: the old live
    hypothesis each new live one extends.
    """
    batch, beams, vocab = log_probs_BWV.shape
    max_new, alpha = config.max_new_tokens, config.length_penalty
    penalty = functools.partial(length_penalty, alpha=alpha,
                                normalization=config.length_normalization)
    num_candidates = min(2 * beams, beams * vocab)
    length = state.num_generated + 1  # of every candidate
    is_last = length == max_new

    candidates_BWV = state.live_log_probs_BW[:, :, None] + log_probs_BWV
    top_BK, index_BK = jax.lax.top_k(candidates_BWV.reshape(batch, -1), num_candidates)
    beam_BK, token_BK = index_BK // vocab, (index_BK % vocab).astype(jnp.int32)
    tokens_BKL = jax.lax.dynamic_update_slice(
        _take(state.live_tokens_BWL, beam_BK), token_BK[:, :, None],
        (0, 0, state.num_generated))
    is_eos_BK = (token_BK == config.eos_id) if config.eos_id is not None else (
        jnp.zeros_like(token_BK, jnp.bool_))

    # Finished pool: only the first W candidates may finish (the rest are spares).
    finishing_BK = ((jnp.arange(num_candidates) < beams)[None, :] & (is_eos_BK | is_last)
                    & ~state.done_B[:, None])
    length_f = length.astype(jnp.float32)
    new_scores_BK = jnp.where(finishing_BK, top_BK / penalty(length_f), -jnp.inf)
    merged_scores = jnp.concatenate([state.finished_scores_BW, new_scores_BK], axis=1)
    finished_scores_BW, pick_BW = jax.lax.top_k(merged_scores, beams)
    merged_lengths = jnp.concatenate([state.finished_lengths_BW,
                                      jnp.broadcast_to(length, top_BK.shape)], axis=1)
    finished = dict(
        finished_scores_BW=finished_scores_BW,
        finished_tokens_BWL=_take(jnp.concatenate([state.finished_tokens_BWL, tokens_BKL],
                                                  axis=1), pick_BW),
        finished_log_probs_BW=_take(jnp.concatenate([state.finished_log_probs_BW, top_BK],
                                                    axis=1), pick_BW),
        finished_lengths_BW=_take(merged_lengths, pick_BW).astype(jnp.int32),
    )

    # Live hypotheses: the W best candidates that did not end in EOS.
    live_log_probs_BW, live_pick_BW = jax.lax.top_k(
        jnp.where(is_eos_BK, -jnp.inf, top_BK), beams)
    parent_BW = _take(beam_BK, live_pick_BW)

    # Done when the best live hypothesis, at its best reachable length, cannot beat the
    # worst finished one. Log-probs only fall, so for alpha > 0 the bound is at L;
    # for alpha <= 0 the penalty never helps a longer hypothesis, so it is now.
    bound_length = jnp.float32(max_new) if alpha > 0 else length_f
    best_possible_B = live_log_probs_BW[:, 0] / penalty(bound_length)
    can_improve_B = best_possible_B > finished_scores_BW[:, -1]
    done_B = state.done_B | ~can_improve_B | is_last

    new_state = dataclasses.replace(
        state, live_tokens_BWL=_take(tokens_BKL, live_pick_BW),
        live_log_probs_BW=live_log_probs_BW, done_B=done_B, num_generated=length, **finished)
    return new_state, parent_BW


def beam_search(
    step_fn: StepFn,
    prompt_BP: jax.Array,
    cache: Any,
    config: BeamSearchConfig,
    *,
    prompt_valid_BP: jax.Array | None = None,
    context: Any = None,
) -> BeamSearchOutput:
    """The `config.beam_size` best continuations of each prompt. Pure; jit it from outside.

    Args:
      step_fn: `(tokens_BT, cache, positions_BT, context) -> (logits_BTV, cache)`;
        see `decoding.prefill` for positions and padding.
      prompt_BP: int [B, P] prompt token ids (cast to int32).
      cache: the step function's initial cache at batch B (not B * W), with room for
        P + L - 1 tokens; tiled to B * W after the prefill.
      config: a `BeamSearchConfig` (static).
      prompt_valid_BP: bool [B, P], False for padding; default all True.
      context: a pytree for every step call, tiled to B * W with the cache; its
        leaves are scalars or lead with B.

    Returns:
      BeamSearchOutput: the n-best list of each row, best first.
    """
    if not isinstance(config, BeamSearchConfig):
        raise TypeError(f"config must be a BeamSearchConfig, got {type(config).__name__}")
    logits_BV, cache, next_position_B = prefill(step_fn, prompt_BP, prompt_valid_BP, cache,
                                                context)
    batch, vocab_size = logits_BV.shape
    _check_vocab(config, vocab_size)
    beams, max_new = config.beam_size, config.max_new_tokens
    cache = add_beam_dim(cache, beams, batch_size=batch, name="cache")
    context = add_beam_dim(context, beams, batch_size=batch, name="context")
    position_BW = jnp.repeat(next_position_B[:, None], beams, axis=1)
    empty_BWL = jnp.full((batch, beams, max_new), config.pad_id, jnp.int32)
    state = BeamState(
        cache=cache,
        live_tokens_BWL=empty_BWL,
        # Only beam 0 is real at first, so the W first hypotheses are all different.
        live_log_probs_BW=jnp.full((batch, beams), -jnp.inf).at[:, 0].set(0.0),
        finished_tokens_BWL=empty_BWL,
        finished_scores_BW=jnp.full((batch, beams), -jnp.inf),
        finished_log_probs_BW=jnp.full((batch, beams), -jnp.inf),
        finished_lengths_BW=jnp.zeros((batch, beams), jnp.int32),
        done_B=jnp.zeros((batch,), jnp.bool_),
        num_generated=jnp.zeros((), jnp.int32),
    )

    def advance(state: BeamState, logits_BWV: jax.Array) -> BeamState:
        state, parent_BW = _advance(state, _log_probs(logits_BWV, state, config), config)
        return dataclasses.replace(state, cache=gather_beams(state.cache, parent_BW))

    logits_BWV = jnp.broadcast_to(logits_BV[:, None, :], (batch, beams, vocab_size))
    state = advance(state, logits_BWV)

    def body(state: BeamState) -> BeamState:
        last_BW = jax.lax.dynamic_index_in_dim(state.live_tokens_BWL, state.num_generated - 1,
                                               axis=2, keepdims=False)
        positions_BW = position_BW + state.num_generated - 1
        logits_N1V, cache = call_step(step_fn, last_BW.reshape(-1, 1), state.cache,
                                      positions_BW.reshape(-1, 1), context)
        state = dataclasses.replace(state, cache=cache)
        return advance(state, logits_N1V.reshape(batch, beams, vocab_size))

    state = run_loop(body, lambda s: ~jnp.all(s.done_B), state, steps=max_new - 1,
                     early_exit=config.early_exit)
    return BeamSearchOutput(tokens_BWL=state.finished_tokens_BWL,
                            scores_BW=state.finished_scores_BW,
                            log_probs_BW=state.finished_log_probs_BW,
                            lengths_BW=state.finished_lengths_BW)
