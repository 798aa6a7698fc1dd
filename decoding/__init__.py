"""flaxzoo.decoding: model-agnostic generation through a step function (jax only).

Dimension key: B batch, P prompt length, T tokens per step call, L new tokens, V vocab.

Step-function protocol:
    step_fn(tokens_BT, cache, positions_BT, context) -> (logits_BTV, cache)

Public API:
    sample(step_fn, prompt_BP, cache, rng, *, max_new_tokens, temperature=1.0,
           top_k=None, context=None) -> new_tokens_BL
    greedy(step_fn, prompt_BP, cache, *, max_new_tokens, context=None) -> new_tokens_BL
    make_generate_fn(step_fn, *, max_new_tokens, temperature=1.0, top_k=None)
        -> jitted generate(prompt_BP, cache, rng=None, context=None) -> new_tokens_BL
    SamplingState: the loop carry (cache, token_B, position_B, rng)
    StepFn: the step-function type
    Logit processors: apply_temperature, top_k_filter, sample_next_token
"""

from flaxzoo.decoding.processors import apply_temperature, sample_next_token, top_k_filter
from flaxzoo.decoding.sampling import (
    SamplingState,
    StepFn,
    greedy,
    make_generate_fn,
    sample,
)

__all__ = [
    "SamplingState",
    "StepFn",
    "apply_temperature",
    "greedy",
    "make_generate_fn",
    "sample",
    "sample_next_token",
    "top_k_filter",
]
