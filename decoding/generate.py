"""One entry point for every strategy, and its stand-alone jitted form.

Dimension key: B batch, P prompt length, L new tokens, W beams.
"""

from __future__ import annotations

from typing import Any, Callable

import jax

from flaxzoo.decoding.beam import BeamSearchOutput, beam_search
from flaxzoo.decoding.config import BeamSearchConfig, SamplingConfig
from flaxzoo.decoding.prefill import StepFn
from flaxzoo.decoding.sampling import SampleOutput, sample

__all__ = ["generate", "make_generate_fn"]


def generate(
    step_fn: StepFn,
    prompt_BP: jax.Array,
    cache: Any,
    config: SamplingConfig | BeamSearchConfig,
    *,
    rng: jax.Array | None = None,
    prompt_valid_BP: jax.Array | None = None,
    context: Any = None,
) -> SampleOutput | BeamSearchOutput:
    """`sample` for a SamplingConfig (greedy at temperature 0), `beam_search` for a
    BeamSearchConfig (which takes no rng). Pure; jit it from outside."""
    if isinstance(config, BeamSearchConfig):
        if rng is not None:
            raise ValueError("rng must be None for beam search (it draws no randomness)")
        return beam_search(step_fn, prompt_BP, cache, config, prompt_valid_BP=prompt_valid_BP,
                           context=context)
    if isinstance(config, SamplingConfig):
        return sample(step_fn, prompt_BP, cache, config, rng=rng,
                      prompt_valid_BP=prompt_valid_BP, context=context)
    raise TypeError(f"config must be a SamplingConfig or a BeamSearchConfig, "
                    f"got {type(config).__name__}")


def make_generate_fn(
    step_fn: StepFn, config: SamplingConfig | BeamSearchConfig
) -> Callable[..., SampleOutput | BeamSearchOutput]:
    """A jit-compiled `generate(prompt_BP, cache, *, rng=None, prompt_valid_BP=None,
    context=None)` for one step function and config.

    The returned function keeps its own compilation cache: it compiles once per
    combination of shapes, dtypes and tree structures of its arguments and is reused
    for new values of the same shapes; keep it and call it repeatedly. The cache
    argument is donated (its buffers are reused for the loop, so do not read it after
    the call). Everything `step_fn` closes over is baked into the program as a
    constant: pass parameters and other large arrays through `context` (for beam
    search `context` is tiled with the beams, so there close over traced values from
    your own jit instead, as `flaxzoo.train.generate` does).
    """
    if not isinstance(config, (SamplingConfig, BeamSearchConfig)):
        raise TypeError(f"config must be a SamplingConfig or a BeamSearchConfig, "
                        f"got {type(config).__name__}")

    def generate_fn(prompt_BP, cache, *, rng=None, prompt_valid_BP=None, context=None):
        return generate(step_fn, prompt_BP, cache, config, rng=rng,
                        prompt_valid_BP=prompt_valid_BP, context=context)

    return jax.jit(generate_fn, donate_argnames=("cache",))
