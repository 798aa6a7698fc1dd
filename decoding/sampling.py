"""Greedy decoding and sampling: prefill once, then one `lax.scan` over new tokens.

Dimension key: B batch, P prompt length, T tokens per step call (P at prefill, then 1),
L new tokens (max_new_tokens), V vocab.

The decoder talks to a model only through a step function

    step_fn(tokens_BT, cache, positions_BT, context) -> (logits_BTV, cache)

`tokens_BT` and `positions_BT` are int32, positions absolute. `cache` is any pytree the
step function understands (the decoder only threads it); `context` is any pytree (or
None) passed through unchanged, e.g. an encoder output, or the model parameters.

Schedule: one call with the whole prompt `[B, P]` at positions `0..P-1` (prefill); its
logits at the last prompt position give new token 0. Then `lax.scan` runs L-1 calls,
each feeding the latest token `[B, 1]` at positions P, P+1, ..., P+L-2 and sampling the
next. The last new token is never fed back, so there is no wasted forward pass, and the
cache needs room for P + L - 1 positions.

`sample` and `greedy` are pure and traceable: call them inside your own `jax.jit`, for
example a model's generate function that builds `step_fn` from parameters that are
arguments of that jit. `make_generate_fn` is the stand-alone jitted form.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from flaxzoo.decoding.processors import (
    _check_temperature,
    _check_top_k,
    _static_int,
    sample_next_token,
)

__all__ = ["StepFn", "SamplingState", "sample", "greedy", "make_generate_fn"]

StepFn = Callable[[jax.Array, Any, jax.Array, Any], tuple[jax.Array, Any]]
"""`step_fn(tokens_BT, cache, positions_BT, context) -> (logits_BTV, cache)`."""


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["cache", "token_B", "position_B", "rng"],
    meta_fields=[],
)
@dataclasses.dataclass(frozen=True)
class SamplingState:
    """Carry of the decode loop, between two step calls.

    Attributes:
      cache: the step function's cache, holding every token before `token_B`.
      token_B: int32 [B], the latest sampled token; not yet in the cache.
      position_B: int32 [B], absolute position of `token_B` (one per row, so that
        rows can later start at different positions).
      rng: PRNG key for the draws still to come; None when decoding greedily.
    """

    cache: Any
    token_B: jax.Array
    position_B: jax.Array
    rng: jax.Array | None


def _split(rng: jax.Array | None) -> tuple[jax.Array | None, jax.Array | None]:
    """(key to carry on, key for this draw); (None, None) when greedy."""
    if rng is None:
        return None, None
    carry, draw = jax.random.split(rng)
    return carry, draw


def _check_prompt(prompt_BP: jax.Array) -> jax.Array:
    prompt_BP = jnp.asarray(prompt_BP)
    if prompt_BP.ndim != 2 or prompt_BP.shape[0] < 1 or prompt_BP.shape[1] < 1:
        raise ValueError(
            f"prompt_BP must have shape [B, P] with B >= 1 and P >= 1; "
            f"got shape {prompt_BP.shape}"
        )
    if not jnp.issubdtype(prompt_BP.dtype, jnp.integer):
        raise ValueError(f"prompt_BP must hold integer token ids; got dtype {prompt_BP.dtype}")
    return prompt_BP.astype(jnp.int32)


def _check_config(
    max_new_tokens: object, temperature: object, top_k: object
) -> tuple[int, float, int | None]:
    """Validates the static options; returns them normalised."""
    n = _static_int("max_new_tokens", max_new_tokens)
    if n < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens!r}")
    return n, _check_temperature(temperature, allow_zero=True), _check_top_k(top_k)


def _check_logits(logits_BTV: jax.Array, tokens_BT: jax.Array) -> None:
    shape = jnp.shape(logits_BTV)
    if len(shape) != 3 or shape[:2] != tokens_BT.shape:
        b, t = tokens_BT.shape
        raise ValueError(
            f"step_fn must return logits of shape [B, T, V] = [{b}, {t}, V] for tokens "
            f"of shape {tokens_BT.shape}; got shape {shape}"
        )


def _shapes(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), tree)


def _check_same_cache(cache_in: Any, cache_out: Any) -> None:
    """The scan carry must keep its type: same tree, shapes and dtypes."""
    spec_in, spec_out = _shapes(cache_in), _shapes(cache_out)
    if jax.tree.structure(spec_in) != jax.tree.structure(spec_out) or any(
        (a.shape, a.dtype) != (b.shape, b.dtype)
        for a, b in zip(jax.tree.leaves(spec_in), jax.tree.leaves(spec_out))
    ):
        raise ValueError(
            "step_fn must return a cache with the structure, shapes and dtypes of the "
            f"cache it was given; given {spec_in}, returned {spec_out}"
        )


def _decode_step(
    step_fn: StepFn,
    state: SamplingState,
    context: Any,
    *,
    temperature: float,
    top_k: int | None,
) -> SamplingState:
    """Feeds `state.token_B` at `state.position_B` and samples the token after it."""
    tokens_B1 = state.token_B[:, None]
    logits_B1V, cache = step_fn(tokens_B1, state.cache, state.position_B[:, None], context)
    _check_logits(logits_B1V, tokens_B1)
    _check_same_cache(state.cache, cache)
    rng, draw_rng = _split(state.rng)
    token_B = sample_next_token(
        logits_B1V[:, 0], draw_rng, temperature=temperature, top_k=top_k
    )
    return SamplingState(
        cache=cache, token_B=token_B, position_B=state.position_B + 1, rng=rng
    )


def sample(
    step_fn: StepFn,
    prompt_BP: jax.Array,
    cache: Any,
    rng: jax.Array | None,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    context: Any = None,
) -> jax.Array:
    """Samples `max_new_tokens` tokens after the prompt. Pure; jit it from outside.

    Args:
      step_fn: `(tokens_BT, cache, positions_BT, context) -> (logits_BTV, cache)`.
      prompt_BP: int [B, P] prompt token ids, P >= 1 (cast to int32).
      cache: the step function's initial cache, with room for P + L - 1 positions.
      rng: PRNG key; may be None when `temperature == 0`.
      max_new_tokens: L, a Python int >= 1.
      temperature: Python float >= 0; 0 is greedy decoding.
      top_k: None, or a Python int >= 1: sample among the k most likely tokens.
      context: any pytree handed unchanged to every step call.

    Returns:
      int32 [B, L] new token ids (the prompt is not included).
    """
    max_new_tokens, temperature, top_k = _check_config(max_new_tokens, temperature, top_k)
    if temperature > 0 and rng is None:
        raise ValueError("rng must be a PRNG key when temperature > 0; got None")
    if temperature == 0:
        rng = None  # Greedy draws no randomness; keep the loop state free of it.
    prompt_BP = _check_prompt(prompt_BP)
    batch, prompt_len = prompt_BP.shape

    positions_BP = jnp.broadcast_to(
        jnp.arange(prompt_len, dtype=jnp.int32), (batch, prompt_len)
    )
    logits_BPV, cache = step_fn(prompt_BP, cache, positions_BP, context)
    _check_logits(logits_BPV, prompt_BP)
    rng, draw_rng = _split(rng)
    first_B = sample_next_token(
        logits_BPV[:, -1], draw_rng, temperature=temperature, top_k=top_k
    )
    state = SamplingState(
        cache=cache,
        token_B=first_B,
        position_B=jnp.full((batch,), prompt_len, jnp.int32),
        rng=rng,
    )

    def body(state: SamplingState, _: None) -> tuple[SamplingState, jax.Array]:
        state = _decode_step(step_fn, state, context, temperature=temperature, top_k=top_k)
        return state, state.token_B

    _, rest_LB = jax.lax.scan(body, state, length=max_new_tokens - 1)
    return jnp.concatenate([first_B[:, None], rest_LB.T], axis=1)


def greedy(
    step_fn: StepFn,
    prompt_BP: jax.Array,
    cache: Any,
    *,
    max_new_tokens: int,
    context: Any = None,
) -> jax.Array:
    """Greedy decoding: `sample` at temperature 0 (argmax each step, no rng).

    Args and returns as `sample`: int [B, P] prompt in, int32 [B, L] new tokens out.
    """
    return sample(
        step_fn,
        prompt_BP,
        cache,
        None,
        max_new_tokens=max_new_tokens,
        temperature=0.0,
        context=context,
    )


def make_generate_fn(
    step_fn: StepFn,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
) -> Callable[..., jax.Array]:
    """A jit-compiled `generate(prompt_BP, cache, rng=None, context=None) -> tokens_BL`.

    The options are fixed here and checked now; the returned function keeps its own
    compilation cache, so it compiles once per combination of shapes, dtypes and tree
    structures of its four arguments and is reused for new values of the same shapes.
    Keep the returned function and call it repeatedly.

    Everything `step_fn` closes over is baked into the program as a constant: pass
    parameters and other large arrays through `context`, which is a jit argument.

    Args:
      step_fn: `(tokens_BT, cache, positions_BT, context) -> (logits_BTV, cache)`.
      max_new_tokens, temperature, top_k: as in `sample`.

    Returns:
      `generate(prompt_BP, cache, rng=None, context=None)` returning int32 [B, L];
      `rng` may be None only when `temperature == 0`.
    """
    max_new_tokens, temperature, top_k = _check_config(max_new_tokens, temperature, top_k)

    def generate(
        prompt_BP: jax.Array,
        cache: Any,
        rng: jax.Array | None = None,
        context: Any = None,
    ) -> jax.Array:
        return sample(
            step_fn,
            prompt_BP,
            cache,
            rng,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            context=context,
        )

    return jax.jit(generate)
