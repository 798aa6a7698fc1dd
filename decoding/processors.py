"""Logit processors: small pure functions on one step's logits, and the token sampler.

Dimension key: B batch, V vocab.

Each processor maps float `logits_BV` to logits of the same shape and dtype, so they
compose by plain function application. Their options (temperature, k) are static Python
numbers: part of the compiled program, not jit arguments. `sample_next_token` applies
them in a fixed order and draws one token per row; later processors (top-p, repetition
penalty) slot in there.
"""

from __future__ import annotations

import math
import numbers
import operator

import jax
import jax.numpy as jnp

__all__ = ["apply_temperature", "top_k_filter", "sample_next_token"]


def _static_int(name: str, value: object) -> int:
    """`value` as a Python int; TypeError naming `name` for bools, floats, arrays."""
    if isinstance(value, (bool, jax.Array)):
        raise TypeError(f"{name} must be a Python int, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{name} must be a Python int, got {value!r}") from None


def _check_temperature(temperature: object, *, allow_zero: bool) -> float:
    """`temperature` as a float: finite and > 0 (>= 0 with `allow_zero`).

    Infinity is refused because `-inf / inf` would turn masked logits into NaN.
    """
    if isinstance(temperature, (bool, jax.Array)) or not isinstance(
        temperature, numbers.Real
    ):
        # jax arrays (traced or not) are refused: temperature 0 selects a different
        # program (argmax), so it must be known when tracing.
        raise TypeError(f"temperature must be a Python float, got {temperature!r}")
    t = float(temperature)
    if not math.isfinite(t) or t < 0 or (t == 0 and not allow_zero):
        bound = ">= 0 (0 means argmax)" if allow_zero else "> 0"
        raise ValueError(f"temperature must be finite and {bound}, got {temperature!r}")
    return t


def _check_top_k(top_k: object) -> int | None:
    """`top_k` as None or an int >= 1."""
    if top_k is None:
        return None
    k = _static_int("top_k", top_k)
    if k <= 0:
        raise ValueError(f"top_k must be None or an int >= 1, got {top_k!r}")
    return k


def _check_logits(logits_BV: jax.Array) -> None:
    if jnp.ndim(logits_BV) != 2:
        raise ValueError(
            f"logits_BV must have shape [B, V]; got shape {jnp.shape(logits_BV)}"
        )
    if not jnp.issubdtype(jnp.result_type(logits_BV), jnp.floating):
        raise ValueError(
            f"logits_BV must be a float array; got dtype {jnp.result_type(logits_BV)}"
        )


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
    Tied tokens then stay equally likely; an exactly-k rule would favour low indices.

    Args:
      logits_BV: float [B, V].
      k: Python int >= 1; `k >= V` keeps everything.

    Returns:
      [B, V] logits with the dropped entries at -inf, in the dtype of `logits_BV`.
    """
    _check_logits(logits_BV)
    k = _static_int("k", k)
    if k <= 0:
        raise ValueError(f"k must be an int >= 1, got {k}")
    if k >= logits_BV.shape[-1]:
        return logits_BV
    kth_largest_B1 = jax.lax.top_k(logits_BV, k)[0][:, -1:]
    return jnp.where(logits_BV >= kth_largest_B1, logits_BV, -jnp.inf).astype(
        logits_BV.dtype
    )


def sample_next_token(
    logits_BV: jax.Array,
    rng: jax.Array | None,
    *,
    temperature: float,
    top_k: int | None = None,
) -> jax.Array:
    """Draws one token per row from `softmax(top_k_filter(logits, top_k) / temperature)`.

    Logits are cast to float32 first, so low-precision model outputs do not coarsen the
    distribution. Top-k and temperature commute mathematically; top-k runs first, on
    the unscaled logits, so rounding in the division cannot create new ties.

    Args:
      logits_BV: float [B, V].
      rng: a PRNG key (`jax.random.key` or a legacy uint32 key); unused, and may be
        None, when `temperature == 0`.
      temperature: Python float >= 0; 0 means argmax (first index among equal maxima,
        no division, no randomness).
      top_k: None for no filtering, or a Python int >= 1 (see `top_k_filter`).

    Returns:
      int32 [B] token ids.
    """
    _check_logits(logits_BV)
    t = _check_temperature(temperature, allow_zero=True)
    k = _check_top_k(top_k)
    logits_BV = logits_BV.astype(jnp.float32)
    if t == 0:
        # The argmax always survives top-k, so filtering could not change the answer.
        return jnp.argmax(logits_BV, axis=-1).astype(jnp.int32)
    if rng is None:
        raise ValueError("rng must be a PRNG key when temperature > 0; got None")
    if k is not None:
        logits_BV = top_k_filter(logits_BV, k)
    logits_BV = apply_temperature(logits_BV, t)
    return jax.random.categorical(rng, logits_BV, axis=-1).astype(jnp.int32)
