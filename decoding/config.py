"""What to generate: the settings of sampling and of beam search, as frozen dataclasses.

Dimension key: none (no arrays here).

A config is hashable and validated when built (a `ValueError` or `TypeError` naming the
field), so it can be a static argument of `jax.jit`: one compiled program per config.
Values that depend on the vocabulary (token ids, top-k) are checked again when the
first logits are seen.
"""

from __future__ import annotations

import dataclasses
import math

from flaxzoo.decoding.processors import (
    _check_penalty,
    _check_temperature,
    _check_top_k,
    _check_top_p,
    _static_float,
    _static_int,
)

__all__ = ["SamplingConfig", "BeamSearchConfig", "LENGTH_NORMALIZATIONS", "length_penalty"]

LENGTH_NORMALIZATIONS = ("power", "gnmt")


def _check_common(config, name: str) -> None:
    """Checks the fields shared by both configs (max/min new tokens, eos/pad ids)."""
    n = _static_int(f"{name}.max_new_tokens", config.max_new_tokens)
    if n < 1:
        raise ValueError(f"{name}.max_new_tokens must be >= 1, got {n}")
    m = _static_int(f"{name}.min_new_tokens", config.min_new_tokens)
    if not 0 <= m <= n:
        raise ValueError(f"{name}.min_new_tokens must lie in [0, max_new_tokens={n}], got {m}")
    if config.eos_id is not None and _static_int(f"{name}.eos_id", config.eos_id) < 0:
        raise ValueError(f"{name}.eos_id must be None or >= 0, got {config.eos_id}")
    if _static_int(f"{name}.pad_id", config.pad_id) < 0:
        raise ValueError(f"{name}.pad_id must be >= 0, got {config.pad_id}")
    if m > 0 and config.eos_id is None:
        raise ValueError(f"{name}.min_new_tokens needs an eos_id (it holds EOS back); got "
                         f"min_new_tokens={m} with eos_id=None")
    if not isinstance(config.early_exit, bool):
        raise TypeError(f"{name}.early_exit must be a bool, got {config.early_exit!r}")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SamplingConfig:
    """Greedy decoding and sampling, one token per row and step.

    Each step the next-token logits go through the processors in this order:
    repetition penalty, EOS held back until `min_new_tokens`, temperature, top-k,
    top-p; then a token is drawn (argmax at temperature 0).
    """

    max_new_tokens: int
    """L, the number of new tokens (a static loop length)."""
    temperature: float = 1.0
    """0 is greedy (argmax, no randomness, no division); > 0 divides the logits."""
    top_k: int | None = None
    """Sample among the k most likely tokens; k >= V keeps all; None: no filter."""
    top_p: float | None = None
    """Nucleus sampling in (0, 1]; None or 1: no filter."""
    repetition_penalty: float = 1.0
    """> 0; tokens in the prompt or the output so far get logit / penalty (positive
    logits) or logit * penalty (negative ones); 1 is none."""
    min_new_tokens: int = 0
    """EOS cannot be chosen before this many new tokens (needs `eos_id`)."""
    eos_id: int | None = None
    """A row that emits this token is done; None: rows run for max_new_tokens."""
    pad_id: int = 0
    """Emitted by rows that are done."""
    early_exit: bool = False
    """Stop the loop (`lax.while_loop`) once every row is done; same output as the
    full-length `lax.scan`."""

    def __post_init__(self):
        _check_common(self, "SamplingConfig")
        try:
            _check_temperature(self.temperature, allow_zero=True)
            _check_top_k(self.top_k)
            _check_top_p(self.top_p)
            _check_penalty(self.repetition_penalty)
        except (TypeError, ValueError) as error:
            raise type(error)(f"SamplingConfig.{error}") from None

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0


@dataclasses.dataclass(frozen=True, kw_only=True)
class BeamSearchConfig:
    """Beam search: `beam_size` hypotheses per row, scored by summed log-probabilities.

    A hypothesis finishes when it emits EOS or reaches `max_new_tokens`; finished
    hypotheses are ranked by `score = log_prob / penalty(length)`, where length counts
    the generated tokens (EOS included; never prompt or padding) and penalty is
    `length ** alpha` ("power", transformers' `length_penalty`) or
    `((5 + length) / 6) ** alpha` ("gnmt", Wu et al. 2016). alpha 0 ranks by raw
    log-probability. A row stops only when no live hypothesis can still beat its worst
    finished one (log-probabilities only fall; for alpha > 0 the bound divides by the
    penalty at max_new_tokens), so stopping never changes the result: this is
    transformers' `early_stopping="never"`.
    """

    max_new_tokens: int
    """L, the longest hypothesis (a static loop length)."""
    beam_size: int
    """W, hypotheses kept per row; also the size of the n-best list."""
    length_penalty: float = 1.0
    """alpha; 0 compares raw log-probabilities, > 0 favours longer hypotheses."""
    length_normalization: str = "power"
    """"power": length ** alpha; "gnmt": ((5 + length) / 6) ** alpha."""
    min_new_tokens: int = 0
    """EOS cannot be chosen before this many new tokens (needs `eos_id`)."""
    eos_id: int | None = None
    pad_id: int = 0
    """Fills each hypothesis after its EOS."""
    early_exit: bool = False
    """Stop the loop once every row is done (same output as the full-length scan)."""

    def __post_init__(self):
        _check_common(self, "BeamSearchConfig")
        if _static_int("BeamSearchConfig.beam_size", self.beam_size) < 1:
            raise ValueError(f"BeamSearchConfig.beam_size must be >= 1, got {self.beam_size}")
        alpha = _static_float("BeamSearchConfig.length_penalty", self.length_penalty)
        if not math.isfinite(alpha):
            raise ValueError(f"BeamSearchConfig.length_penalty must be finite, got {alpha}")
        if self.length_normalization not in LENGTH_NORMALIZATIONS:
            raise ValueError(f"BeamSearchConfig.length_normalization must be one of "
                             f"{LENGTH_NORMALIZATIONS}, got {self.length_normalization!r}")


def length_penalty(length, *, alpha: float, normalization: str = "power"):
    """The divisor of a hypothesis' log-probability: `length ** alpha` ("power") or
    `((5 + length) / 6) ** alpha` ("gnmt"). Works on Python numbers and arrays."""
    if normalization == "power":
        return length ** alpha
    if normalization == "gnmt":
        return ((5.0 + length) / 6.0) ** alpha
    raise ValueError(f"normalization must be one of {LENGTH_NORMALIZATIONS}, "
                     f"got {normalization!r}")
