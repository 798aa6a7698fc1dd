"""Text generation from a checkpoint: the glue between models/ and decoding/.

Dimension key: B batch, P prompt length, L new tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxzoo.decoding import sample
from flaxzoo.models import GPT, GPTConfig, init_cache
from flaxzoo.train import checkpoint as ckpt
from flaxzoo.train.loop import CHECKPOINT_DIR
from flaxzoo.train.tokenizer import CharTokenizer


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A model split into its static graph and its parameters, plus its tokenizer."""

    graphdef: nnx.GraphDef
    params: Any
    config: GPTConfig
    tokenizer: CharTokenizer
    step: int


def _checkpoint_path(directory: str | os.PathLike[str]) -> str:
    """Accepts either a run's out_dir or its checkpoint/ folder."""
    nested = os.path.join(os.fspath(directory), CHECKPOINT_DIR)
    return nested if os.path.isdir(nested) else os.fspath(directory)


def load_model(directory: str | os.PathLike[str]) -> LoadedModel:
    """Loads the newest checkpoint's parameters, config and tokenizer."""
    path = _checkpoint_path(directory)
    meta = ckpt.load_metadata(path)
    try:
        config = GPTConfig.from_dict(meta.model_config)
        tokenizer = CharTokenizer.from_json(meta.tokenizer_json)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {directory} has an unusable config: {err}") from None
    abstract = nnx.eval_shape(lambda: GPT(config, rngs=nnx.Rngs(0)))
    graphdef, abstract_params = nnx.split(abstract, nnx.Param)
    params = ckpt.restore_params(path, abstract_params, meta.step)
    return LoadedModel(graphdef=graphdef, params=params, config=config,
                       tokenizer=tokenizer, step=meta.step)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens", "temperature", "top_k"))
def generate_tokens(graphdef: nnx.GraphDef, params: Any, prompt_BP: jax.Array,
                    rng: jax.Array | None, *, max_new_tokens: int, temperature: float,
                    top_k: int | None) -> jax.Array:
    """New tokens [B, L] after `prompt_BP`, one compiled scan per shape and setting."""
    model = nnx.merge(graphdef, params)
    batch, prompt_len = prompt_BP.shape

    def step_fn(tokens_BT, cache, positions_BT, context):
        del context
        return model(tokens_BT, positions_BT, cache=cache)

    # The last new token is never fed back, so P + L - 1 slots suffice.
    cache = init_cache(model.config, batch, prompt_len + max_new_tokens - 1)
    return sample(step_fn, prompt_BP, cache, rng, max_new_tokens=max_new_tokens,
                  temperature=temperature, top_k=top_k)


def generate_text(model: LoadedModel, prompt: str, *, max_new_tokens: int,
                  temperature: float = 0.0, top_k: int | None = None, seed: int = 0) -> str:
    """The prompt's continuation (without the prompt).

    Raises ValueError for an empty prompt, a prompt character outside the
    vocabulary, or prompt + new tokens beyond the model's context window.
    """
    if not prompt:
        raise ValueError("prompt must not be empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1; got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0; got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1; got {top_k}")
    ids = model.tokenizer.encode(prompt, unknown="replace")
    unknown = np.flatnonzero(ids == model.tokenizer.unk_id)
    if unknown.size:
        i = int(unknown[0])
        raise ValueError(f"prompt: character {prompt[i]!r} at index {i} is not among the "
                         f"{len(model.tokenizer.chars)} characters the model was trained on")
    window = model.config.max_seq_len
    if len(ids) + max_new_tokens - 1 > window:
        raise ValueError(
            f"prompt ({len(ids)} characters) + new tokens ({max_new_tokens}) exceed the "
            f"model's context window of {window}; at most {window - len(ids) + 1} new tokens "
            f"fit after this prompt")
    rng = None if temperature == 0 else jax.random.key(seed)
    new_ids = generate_tokens(model.graphdef, model.params, jnp.asarray(ids)[None], rng,
                              max_new_tokens=max_new_tokens, temperature=float(temperature),
                              top_k=top_k)
    return model.tokenizer.decode(jax.device_get(new_ids)[0])
