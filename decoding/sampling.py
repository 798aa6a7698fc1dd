"""Greedy decoding and sampling: prefill once, then one loop over new tokens.

Dimension key: B batch, P prompt length, T tokens per step call (P at prefill, then 1),
L new tokens (max_new_tokens), V vocab.

Schedule: one step call with the whole prompt (`decoding.prefill`); its logits after
each row's last real token give new token 0. Then L - 1 calls, each feeding the latest
token `[B, 1]` at the row's next position and choosing the token after it. The last new
token is never fed back, so the cache needs room for P + L - 1 tokens.

Every row carries a `done` flag: a row that emits `eos_id` is done, and from then on
emits `pad_id` only. An EOS inside the prompt does not count. The loop is a
`lax.scan` of static length L - 1, or with `early_exit` a `lax.while_loop` that stops
once every row is done; both give the same tokens.

`sample` and `greedy` are pure and traceable: call them inside your own `jax.jit`
(for example a model's generate function whose parameters are arguments of that jit).
`decoding.make_generate_fn` is the stand-alone jitted form.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp

from flaxzoo.decoding.config import SamplingConfig
from flaxzoo.decoding.prefill import StepFn, call_step, prefill, seen_in_prompt
from flaxzoo.decoding.processors import (
    _check_token_id,
    repetition_penalty,
    sample_next_token,
    seen_tokens,
    suppress_token,
)

__all__ = ["SamplingState", "SampleOutput", "sample", "greedy"]


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["cache", "token_B", "position_B", "num_generated", "tokens_BL", "done_B",
                 "seen_BV", "rng"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class SamplingState:
    """Carry of the decode loop, between two step calls.

    Attributes:
      cache: the step function's cache, holding every token before `token_B`.
      token_B: int32 [B], the latest new token; not yet in the cache.
      position_B: int32 [B], the position of `token_B` in its row.
      num_generated: int32 scalar, new tokens chosen so far (`token_B` included).
      tokens_BL: int32 [B, L], the new tokens so far, `pad_id` after them.
      done_B: bool [B], the row has emitted EOS.
      seen_BV: bool [B, V], tokens in the prompt or output (repetition penalty only;
        else None).
      rng: PRNG key for the draws still to come; None when decoding greedily.
    """

    cache: Any
    token_B: jax.Array
    position_B: jax.Array
    num_generated: jax.Array
    tokens_BL: jax.Array
    done_B: jax.Array
    seen_BV: jax.Array | None
    rng: jax.Array | None


@functools.partial(
    jax.tree_util.register_dataclass, data_fields=["tokens_BL", "lengths_B"], meta_fields=[]
)
@dataclasses.dataclass(frozen=True)
class SampleOutput:
    """tokens_BL: int32 [B, L] new tokens (`pad_id` after a row's EOS);
    lengths_B: int32 [B], new tokens up to and including EOS (L if none)."""

    tokens_BL: jax.Array
    lengths_B: jax.Array


def _split(rng: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
    """(key to carry on, key for this draw); (None, None) when greedy."""
    if rng is None:
        return None, None
    carry, draw = jax.random.split(rng)
    return carry, draw


def _choose(logits_BV: jax.Array, state: SamplingState, config: SamplingConfig
            ) -> tuple[jax.Array, jax.Array | None]:
    """The processors, then one token per row (pad for rows already done)."""
    if config.repetition_penalty != 1.0:
        logits_BV = repetition_penalty(logits_BV, state.seen_BV, config.repetition_penalty)
    if config.min_new_tokens > 0:
        logits_BV = suppress_token(logits_BV, config.eos_id,
                                   state.num_generated < config.min_new_tokens)
    rng, draw_rng = _split(state.rng)
    token_B = sample_next_token(logits_BV, draw_rng, temperature=config.temperature,
                                top_k=config.top_k, top_p=config.top_p)
    return jnp.where(state.done_B, config.pad_id, token_B).astype(jnp.int32), rng


def _emit(state: SamplingState, token_B: jax.Array, rng: jax.Array | None,
          config: SamplingConfig) -> SamplingState:
    """Appends `token_B` to the output and updates done / seen."""
    tokens_BL = jax.lax.dynamic_update_slice(state.tokens_BL, token_B[:, None],
                                             (0, state.num_generated))
    done_B = state.done_B
    if config.eos_id is not None:
        done_B = done_B | (token_B == config.eos_id)
    seen_BV = state.seen_BV
    if seen_BV is not None:
        seen_BV = seen_tokens(token_B[:, None], seen_BV.shape[1], seen_BV=seen_BV)
    return dataclasses.replace(state, token_B=token_B, num_generated=state.num_generated + 1,
                               tokens_BL=tokens_BL, done_B=done_B, seen_BV=seen_BV, rng=rng)


def _check_vocab(config, vocab_size: int) -> None:
    """Token ids of the config against the vocabulary, once V is known."""
    _check_token_id(f"{type(config).__name__}.pad_id", config.pad_id, vocab_size)
    if config.eos_id is not None:
        _check_token_id(f"{type(config).__name__}.eos_id", config.eos_id, vocab_size)


def run_loop(body, cond, state, *, steps: int, early_exit: bool):
    """`steps` applications of `body` (`lax.scan`), or a `lax.while_loop` that also
    stops when `cond(state)` is False. `cond` must stay False once False and `body`
    must not change the output after that, so both forms agree."""
    if steps <= 0:
        return state
    if early_exit:
        def keep_going(carry):
            step, state = carry
            return (step < steps) & cond(state)

        def advance(carry):
            step, state = carry
            return step + 1, body(state)

        return jax.lax.while_loop(keep_going, advance, (jnp.zeros((), jnp.int32), state))[1]
    return jax.lax.scan(lambda s, _: (body(s), None), state, length=steps)[0]


def sample(
    step_fn: StepFn,
    prompt_BP: jax.Array,
    cache: Any,
    config: SamplingConfig,
    *,
    rng: jax.Array | None = None,
    prompt_valid_BP: jax.Array | None = None,
    context: Any = None,
) -> SampleOutput:
    """Generates `config.max_new_tokens` tokens after each prompt. Pure; jit it from outside.

    Args:
      step_fn: `(tokens_BT, cache, positions_BT, context) -> (logits_BTV, cache)`;
        see `decoding.prefill` for positions and padding.
      prompt_BP: int [B, P] prompt token ids, P >= 1 (cast to int32).
      cache: the step function's initial cache, with room for P + L - 1 tokens.
      config: a `SamplingConfig` (static: one program per config).
      rng: PRNG key; may be None only when `config.temperature == 0`.
      prompt_valid_BP: bool [B, P], False for padding (left padding is usual; any
        layout works); default all True. Each row needs one real token: checked when
        the mask is concrete; under your own jit a row without one is not detected
        and generates from meaningless logits.
      context: any pytree handed unchanged to every step call.

    Returns:
      SampleOutput: tokens_BL int32 [B, L] (the prompt not included) and lengths_B.
    """
    if not isinstance(config, SamplingConfig):
        raise TypeError(f"config must be a SamplingConfig, got {type(config).__name__}")
    if config.is_greedy:
        rng = None  # Greedy draws no randomness; keep the loop state free of it.
    elif rng is None:
        raise ValueError("rng must be a PRNG key when temperature > 0; got None")
    logits_BV, cache, next_position_B = prefill(step_fn, prompt_BP, prompt_valid_BP, cache,
                                                context)
    batch, vocab_size = logits_BV.shape
    _check_vocab(config, vocab_size)
    max_new = config.max_new_tokens
    seen_BV = None
    if config.repetition_penalty != 1.0:
        seen_BV = seen_in_prompt(prompt_BP, prompt_valid_BP, vocab_size)
    state = SamplingState(
        cache=cache,
        token_B=jnp.full((batch,), config.pad_id, jnp.int32),
        position_B=next_position_B,
        num_generated=jnp.zeros((), jnp.int32),
        tokens_BL=jnp.full((batch, max_new), config.pad_id, jnp.int32),
        done_B=jnp.zeros((batch,), jnp.bool_),
        seen_BV=seen_BV,
        rng=rng,
    )
    state = _emit(state, *_choose(logits_BV, state, config), config)

    def body(state: SamplingState) -> SamplingState:
        logits_B1V, cache = call_step(step_fn, state.token_B[:, None], state.cache,
                                      state.position_B[:, None], context)
        state = dataclasses.replace(state, cache=cache, position_B=state.position_B + 1)
        return _emit(state, *_choose(logits_B1V[:, 0], state, config), config)

    state = run_loop(body, lambda s: ~jnp.all(s.done_B), state, steps=max_new - 1,
                     early_exit=config.early_exit)
    if config.eos_id is None:
        lengths_B = jnp.full((batch,), max_new, jnp.int32)
    else:
        is_eos_BL = state.tokens_BL == config.eos_id
        lengths_B = jnp.where(is_eos_BL.any(axis=1), jnp.argmax(is_eos_BL, axis=1) + 1,
                              max_new).astype(jnp.int32)
    return SampleOutput(tokens_BL=state.tokens_BL, lengths_B=lengths_B)


def greedy(
    step_fn: StepFn,
    prompt_BP: jax.Array,
    cache: Any,
    *,
    max_new_tokens: int,
    eos_id: int | None = None,
    pad_id: int = 0,
    prompt_valid_BP: jax.Array | None = None,
    context: Any = None,
) -> SampleOutput:
    """Greedy decoding: `sample` with `SamplingConfig(temperature=0, ...)`."""
    config = SamplingConfig(max_new_tokens=max_new_tokens, temperature=0.0, eos_id=eos_id,
                            pad_id=pad_id)
    return sample(step_fn, prompt_BP, cache, config, prompt_valid_BP=prompt_valid_BP,
                  context=context)
