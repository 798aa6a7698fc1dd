"""flaxzoo.decoding: model-agnostic generation through a step function (jax only).

Dimension key: B batch, P prompt length, T tokens per step call, L new tokens,
W beams, V vocab.

Step-function protocol (see `decoding.prefill`):
    step_fn(tokens_BT, cache, positions_BT, context) -> (logits_BTV, cache)
Padding tokens get position PAD_POSITION (-1); real tokens count from 0 in each row.

Public API:
    SamplingConfig, BeamSearchConfig: what to generate (frozen, validated, static)
    sample(step_fn, prompt_BP, cache, config, *, rng, prompt_valid_BP, context) -> SampleOutput
    greedy(step_fn, prompt_BP, cache, *, max_new_tokens, eos_id, ...) -> SampleOutput
    beam_search(step_fn, prompt_BP, cache, config, *, prompt_valid_BP, context) -> BeamSearchOutput
    generate(...): either, by config type; make_generate_fn(step_fn, config): jitted
    left_pad, prompt_positions: batches of prompts of different lengths
    Logit processors: apply_temperature, top_k_filter, top_p_filter, repetition_penalty,
        suppress_token, seen_tokens, sample_next_token
    Beam helpers: add_beam_dim, gather_beams; length_penalty
    Loop state: SamplingState, BeamState
"""

from flaxzoo.decoding.beam import (
    BeamSearchOutput,
    BeamState,
    add_beam_dim,
    beam_search,
    gather_beams,
)
from flaxzoo.decoding.config import (
    LENGTH_NORMALIZATIONS,
    BeamSearchConfig,
    SamplingConfig,
    length_penalty,
)
from flaxzoo.decoding.generate import generate, make_generate_fn
from flaxzoo.decoding.prefill import PAD_POSITION, StepFn, left_pad, prompt_positions
from flaxzoo.decoding.processors import (
    apply_temperature,
    repetition_penalty,
    sample_next_token,
    seen_tokens,
    suppress_token,
    top_k_filter,
    top_p_filter,
)
from flaxzoo.decoding.sampling import SampleOutput, SamplingState, greedy, sample

__all__ = [
    "BeamSearchConfig",
    "BeamSearchOutput",
    "BeamState",
    "LENGTH_NORMALIZATIONS",
    "PAD_POSITION",
    "SampleOutput",
    "SamplingConfig",
    "SamplingState",
    "StepFn",
    "add_beam_dim",
    "apply_temperature",
    "beam_search",
    "gather_beams",
    "generate",
    "greedy",
    "left_pad",
    "length_penalty",
    "make_generate_fn",
    "prompt_positions",
    "repetition_penalty",
    "sample",
    "sample_next_token",
    "seen_tokens",
    "suppress_token",
    "top_k_filter",
    "top_p_filter",
]
