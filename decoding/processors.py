"""Logit processors: small pure functions on one step's logits, and the token sampler.

Dimension key: B batch, V vocab, T tokens.

Each processor maps float `logits_BV` to logits of the same shape and dtype, so they
compose by plain function application; `process_logits` composes them in the order
transformers uses (repetition penalty, minimum length, temperature, top-k, top-p), and
`sample_next_token` draws from the result. Options (temperature, k, p, penalty) are
static Python numbers: part of the compiled program, not jit arguments.

Tie rules: top-k and top-p keep every token whose logit equals the last one kept, so
tied tokens stay equally likely (an exactly-k rule would favour low token ids).
"""

from __future__ import annotations

import math
import numbers
import operator

import jax
import jax.numpy as jnp

__all__ = [
    "apply_temperature",
    "top_k_filter",
    "top_p_filter",
    "repetition_penalty",
    "suppress_token",
    "seen_tokens",
    "sample_next_token",
]


def _static_int(name: str, value: object) -> int:
    """`value` as a Python int; TypeError naming `name` for bools, floats, arrays."""
    if isinstance(value, (bool, jax.Array)):
        raise TypeError(f"{name} must be a Python int, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be a Python int, got {value!r}") from None


def _static_float(name: str, value: object) -> float:
    """`value` as a Python float; TypeError naming `name` for bools and arrays.

    jax arrays (traced or not) are refused: these options select different programs
    (temperature 0 is argmax), so they must be known when tracing.
    """
    if isinstance(value, (bool, jax.Array)) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a Python float, got {value!r}")
    return float(value)


def _check_temperature(temperature: object, *, allow_zero: bool) -> float:
    """`temperature` as a float: finite and > 0 (>= 0 with `allow_zero`).

    Infinity is refused because `-inf / inf` would turn masked logits into NaN.
    """
    t = _static_float("temperature", temperature)
    if not math.isfinite(t) or t < 0 or (t == 0 and not allow_zero):
        bound = ">= 0 (0 means argmax)" if allow_zero else "> 0"
        raise ValueError(f"temperature must be finite and {bound}, got {temperature!r}")
    return t


def _check_top_k(top_k: object, name: str = "top_k") -> int | None:
    """`top_k` as None or an int >= 1."""
    if top_k is None:
        return None
    k = _static_int(name, top_k)
    if k <= 0:
        raise ValueError(f"{name} must be an int >= 1 (or None: no filter), got {top_k!r}")
    return k


def _check_top_p(top_p: object, name: str = "top_p") -> float | None:
    """`top_p` as None or a float in (0, 1]."""
    if top_p is None:
        return None
    p = _static_float(name, top_p)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"{name} must be a float in (0, 1] (or None: no filter), got {top_p!r}")
    return p


def _check_penalty(penalty: object, name: str = "repetition_penalty") -> float:
    """`penalty` as a finite float > 0 (1 means no penalty)."""
    value = _static_float(name, penalty)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite float > 0 (1 means none), got {penalty!r}")
    return value


def _check_logits(logits_BV: jax.Array) -> None:
    if jnp.ndim(logits_BV) != 2:
        raise ValueError(
            f"logits_BV must have shape [B, V]; got shape {jnp.shape(logits_BV)}"
        )
    if not jnp.issubdtype(jnp.result_type(logits_BV), jnp.floating):
        raise ValueError(
            f"logits_BV must be a float array; got dtype {jnp.result_type(logits_BV)}"
        )


def _check_token_id(name: str, token_id: int, vocab_size: int) -> None:
    if not 0 <= token_id < vocab_size:
        raise ValueError(f"{name} must lie in [0, {vocab_size}) (the vocabulary); got {token_id}")


def apply_temperature(logits_BV: jax.Array, temperature: float) -> jax.Array:
    """Divides logits by `temperature`.

    Args:
      logits_BV: float [B, V]; -inf entries stay -inf.
      temperature: Python float, finite and > 0. Below 1 sharpens the distribution,
        above 1 flattens it. The limit 0 (argmax) is `sample_next_token(...,
        temperature=0)`.

    Returns:
      [B, V] logits / temperature, in the dtype of `logits_BV`.
    """
    _check_logits(logits_BV)
    t = _check_temperature(temperature, allow_zero=False)
    return logits_BV / jnp.asarray(t, logits_BV.dtype)


def top_k_filter(logits_BV: jax.Array, k: int) -> jax.Array:
    """Keeps the `k` largest logits of each row and sets the others to -inf.

    Ties: every logit equal to the row's k-th largest value is kept, so a row with ties
    at that value keeps more than `k` entries (`[3, 3, 1]` with k=1 keeps both 3s).

    Args:
      logits_BV: float [B, V].
      k: Python int >= 1; `k >= V` keeps everything (k <= 0 is an error).

    Returns:
      [B, V] logits with the dropped entries at -inf, in the dtype of `logits_BV`.
    """
    _check_logits(logits_BV)
    k = _check_top_k(k, "k")
    if k is None:
        raise TypeError("k must be a Python int, got None")
    if k >= logits_BV.shape[-1]:
        return logits_BV
    # The k-th largest is the smallest of the top k. Not `[:, -1:]`: XLA:CPU turns a
    # top_k whose output is sliced into a full sort of the row (30-50x slower at V=8192);
    # a reduction over all k values keeps its fast TopK kernel. nanmin keeps the k-th
    # value also when NaNs rank among the top k.
    kth_largest_B1 = jnp.nanmin(jax.lax.top_k(logits_BV, k)[0], axis=-1, keepdims=True)
    return jnp.where(logits_BV >= kth_largest_B1, logits_BV, -jnp.inf).astype(
        logits_BV.dtype
    )


def top_p_filter(logits_BV: jax.Array, p: float) -> jax.Array:
    """Nucleus filtering: keeps the most likely tokens whose probability reaches `p`.

    Tokens are ranked by logit; a token is kept when the probability of the tokens
    ranked above it is still below `p`. So the kept set is the smallest top set whose
    total reaches `p`, and the most likely token is always kept (its prefix is 0).
    Ties: every token whose logit equals the last kept one is kept too, so the result
    does not depend on how a sort orders equal logits. Probabilities are computed in
    float32.

    Args:
      logits_BV: float [B, V].
      p: Python float in (0, 1]; 1 keeps everything.

    Returns:
      [B, V] logits with the dropped entries at -inf, in the dtype of `logits_BV`.
    """
    _check_logits(logits_BV)
    p = _check_top_p(p, "p")
    if p is None:
        raise TypeError("p must be a Python float, got None")
    if p >= 1.0:
        return logits_BV
    logits32_BV = logits_BV.astype(jnp.float32)
    sorted_BV = -jnp.sort(-logits32_BV, axis=-1)  # descending
    probs_BV = jax.nn.softmax(sorted_BV, axis=-1)
    mass_above_BV = jnp.cumsum(probs_BV, axis=-1) - probs_BV
    keep_BV = mass_above_BV < p
    threshold_B1 = jnp.min(jnp.where(keep_BV, sorted_BV, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(logits32_BV >= threshold_B1, logits_BV, -jnp.inf).astype(logits_BV.dtype)


def repetition_penalty(logits_BV: jax.Array, seen_BV: jax.Array, penalty: float) -> jax.Array:
    """Penalises tokens already seen (CTRL, Keskar et al. 2019; transformers' rule).

    The logit of each token marked in `seen_BV` is divided by `penalty` when positive
    and multiplied by it when negative, once, however often the token occurred.

    Args:
      logits_BV: float [B, V].
      seen_BV: bool [B, V], True for tokens in the prompt or the output so far (see
        `seen_tokens`).
      penalty: Python float > 0; 1 changes nothing, above 1 discourages repeats.

    Returns:
      [B, V] logits, in the dtype of `logits_BV`.
    """
    _check_logits(logits_BV)
    penalty = _check_penalty(penalty, "penalty")
    if jnp.shape(seen_BV) != jnp.shape(logits_BV):
        raise ValueError(f"seen_BV must have the shape of logits_BV {jnp.shape(logits_BV)}; "
                         f"got {jnp.shape(seen_BV)}")
    factor = jnp.asarray(penalty, logits_BV.dtype)
    penalised_BV = jnp.where(logits_BV < 0, logits_BV * factor, logits_BV / factor)
    return jnp.where(jnp.asarray(seen_BV, jnp.bool_), penalised_BV, logits_BV)


def suppress_token(logits_BV: jax.Array, token_id: int, suppress_B: jax.Array) -> jax.Array:
    """Sets the logit of `token_id` to -inf in the rows where `suppress_B` is True.

    With the EOS id and `suppress_B = num_generated < min_new_tokens` this is the
    minimum-length rule.

    Args:
      logits_BV: float [B, V].
      token_id: Python int in [0, V).
      suppress_B: bool [B] (or a scalar, for every row).

    Returns:
      [B, V] logits, in the dtype of `logits_BV`.
    """
    _check_logits(logits_BV)
    token_id = _static_int("token_id", token_id)
    _check_token_id("token_id", token_id, logits_BV.shape[-1])
    suppress_B1 = jnp.reshape(jnp.broadcast_to(suppress_B, logits_BV.shape[:1]), (-1, 1))
    is_token_V = jnp.arange(logits_BV.shape[-1]) == token_id
    return jnp.where(suppress_B1 & is_token_V, -jnp.inf, logits_BV).astype(logits_BV.dtype)


def seen_tokens(tokens_BT: jax.Array, vocab_size: int, valid_BT: jax.Array | None = None,
                seen_BV: jax.Array | None = None) -> jax.Array:
    """bool [B, V]: which token ids occur in `tokens_BT` (where `valid_BT`), or in `seen_BV`.

    Args:
      tokens_BT: int [B, T] token ids in [0, V).
      vocab_size: V, a Python int.
      valid_BT: bool [B, T], False for padding (not counted); default all True.
      seen_BV: bool [B, V] to add to; default none seen.
    """
    tokens_BT = jnp.asarray(tokens_BT)
    if tokens_BT.ndim != 2:
        raise ValueError(f"tokens_BT must have shape [B, T]; got {tokens_BT.shape}")
    batch = tokens_BT.shape[0]
    if seen_BV is None:
        seen_BV = jnp.zeros((batch, vocab_size), jnp.bool_)
    if valid_BT is None:
        valid_BT = jnp.ones(tokens_BT.shape, jnp.bool_)
    rows_BT = jnp.broadcast_to(jnp.arange(batch)[:, None], tokens_BT.shape)
    return seen_BV.at[rows_BT, tokens_BT].max(jnp.asarray(valid_BT, jnp.bool_), mode="drop")


def _warp(logits_BV: jax.Array, temperature: float, top_k: int | None,
          top_p: float | None) -> jax.Array:
    """Temperature, then top-k, then top-p (transformers' order; top-p sees the
    tempered distribution, top-k and temperature commute)."""
    logits_BV = apply_temperature(logits_BV, temperature)
    if top_k is not None:
        logits_BV = top_k_filter(logits_BV, top_k)
    if top_p is not None:
        logits_BV = top_p_filter(logits_BV, top_p)
    return logits_BV


def sample_next_token(
    logits_BV: jax.Array,
    rng: jax.Array | None,
    *,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
) -> jax.Array:
    """Draws one token per row from `softmax(top_p(top_k(logits / temperature)))`.

    Logits are cast to float32 first, so low-precision model outputs do not coarsen
    the distribution.

    Args:
      logits_BV: float [B, V].
      rng: a PRNG key (`jax.random.key` or a legacy uint32 key); unused, and may be
        None, when `temperature == 0`.
      temperature: Python float >= 0; 0 means argmax (first index among equal maxima,
        no division, no randomness; top-k and top-p always keep the argmax).
      top_k: None for no filtering, or a Python int >= 1 (see `top_k_filter`).
      top_p: None for no filtering, or a Python float in (0, 1] (see `top_p_filter`).

    Returns:
      int32 [B] token ids.
    """
    _check_logits(logits_BV)
    t = _check_temperature(temperature, allow_zero=True)
    k, p = _check_top_k(top_k), _check_top_p(top_p)
    logits_BV = logits_BV.astype(jnp.float32)
    if t == 0:
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    if rng is None:
        raise ValueError("rng must be a PRNG key when temperature > 0; got None")
    logits_BV = _warp(logits_BV, t, k, p)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)
