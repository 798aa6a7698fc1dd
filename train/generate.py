"""Generation from models and checkpoints: the glue between models/ and decoding/.

Dimension key: B batch, P prompt length, S encoder input length, L new tokens, W beams.

`generate_gpt` and `generate_t5` run any `flaxzoo.decoding` config (greedy, sampling,
beam search) on a model. Each is one jit-compiled program per (model graph, config,
input shapes) that takes the parameters as arguments, so new prompts of the same shapes
reuse it. Both refuse, before any compute, a prompt plus new tokens that would not fit
the model's context window.

`load_model` and `generate_text` work on checkpoints: a GPT on characters written by
`flaxzoo train`, or a T5 from spelling to phonemes written by `flaxzoo task pronounce`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from flaxzoo.decoding import (
    BeamSearchConfig,
    BeamSearchOutput,
    SampleOutput,
    SamplingConfig,
    generate,
    left_pad,
)
from flaxzoo.models import GPT, T5, GPTConfig, T5Config, init_cache
from flaxzoo.train import checkpoint as ckpt
from flaxzoo.train.loop import CHECKPOINT_DIR
from flaxzoo.train.tasks.pronunciation import (
    EOS_ID,
    PAD_ID,
    VOCABULARY_FORMAT,
    Seq2SeqVocabulary,
)
from flaxzoo.train.tokenizer import CharTokenizer

DecodeConfig = SamplingConfig | BeamSearchConfig


def check_context_window(prompt_len: int, max_new_tokens: int, max_seq_len: int) -> None:
    """ValueError unless `prompt_len` tokens and `max_new_tokens` new ones fit the window.

    The last new token is never fed back, so prompt_len + max_new_tokens - 1 positions
    must fit in max_seq_len.
    """
    needed = prompt_len + max_new_tokens - 1
    if needed > max_seq_len:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceed the "
            f"model's context window of {max_seq_len}; at most {max_seq_len - prompt_len + 1} "
            f"new tokens fit after this prompt")


def _check_decode_args(config: Any, rng: jax.Array | None) -> None:
    if not isinstance(config, (SamplingConfig, BeamSearchConfig)):
        raise TypeError(f"config must be a SamplingConfig or a BeamSearchConfig, "
                        f"got {type(config).__name__}")
    if isinstance(config, SamplingConfig) and not config.is_greedy and rng is None:
        raise ValueError("rng must be a PRNG key when temperature > 0; got None")
    if isinstance(config, BeamSearchConfig) or config.is_greedy:
        if rng is not None:
            raise ValueError("rng must be None for greedy decoding and beam search")


@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def _generate_gpt(graphdef: nnx.GraphDef, params: Any, prompt_BP: jax.Array,
                  prompt_valid_BP: jax.Array | None, rng: jax.Array | None, *,
                  config: DecodeConfig) -> SampleOutput | BeamSearchOutput:
    model = nnx.merge(graphdef, params)
    batch, prompt_len = prompt_BP.shape
    # The last new token is never fed back, so P + L - 1 slots suffice.
    cache = init_cache(model.config, batch, prompt_len + config.max_new_tokens - 1)
    return generate(model.decode_step, prompt_BP, cache, config, rng=rng,
                    prompt_valid_BP=prompt_valid_BP)


def generate_gpt(model: GPT, prompt_BP: jax.Array, config: DecodeConfig, *,
                 prompt_valid_BP: jax.Array | None = None,
                 rng: jax.Array | None = None) -> SampleOutput | BeamSearchOutput:
    """Continues each prompt with a GPT.

    Args:
      model: a `models.GPT`.
      prompt_BP: int [B, P] token ids; rows of different lengths are left-padded
        (`decoding.left_pad`), the padding marked False in `prompt_valid_BP`.
      config: `decoding.SamplingConfig` (greedy at temperature 0) or
        `decoding.BeamSearchConfig`.
      rng: a PRNG key for sampling; None for greedy and beam search.

    Returns:
      `decoding.SampleOutput` ([B, L] tokens) or `decoding.BeamSearchOutput`
      ([B, W, L] n-best).
    """
    _check_decode_args(config, rng)
    prompt_BP = jnp.asarray(prompt_BP)
    if prompt_BP.ndim != 2:
        raise ValueError(f"prompt_BP must have shape [B, P]; got {prompt_BP.shape}")
    check_context_window(prompt_BP.shape[1], config.max_new_tokens, model.config.max_seq_len)
    graphdef, params = nnx.split(model)
    return _generate_gpt(graphdef, params, prompt_BP, prompt_valid_BP, rng, config=config)


@functools.partial(jax.jit, static_argnames=("graphdef", "config"))
def _generate_t5(graphdef: nnx.GraphDef, params: Any, inputs_BS: jax.Array,
                 inputs_valid_BS: jax.Array | None, rng: jax.Array | None, *,
                 config: DecodeConfig) -> SampleOutput | BeamSearchOutput:
    model = nnx.merge(graphdef, params)
    encoded = model.encode(inputs_BS, valid_BS=inputs_valid_BS)
    batch = inputs_BS.shape[0]
    # The decoder prompt is the start token alone; it and L - 1 new tokens are fed.
    start_B1 = jnp.full((batch, 1), model.config.decoder_start_id, jnp.int32)
    cache = model.init_self_cache(batch, config.max_new_tokens)
    return generate(model.decode_step, start_B1, cache, config, rng=rng,
                    context=model.encoder_context(encoded))


def generate_t5(model: T5, inputs_BS: jax.Array, config: DecodeConfig, *,
                inputs_valid_BS: jax.Array | None = None,
                rng: jax.Array | None = None) -> SampleOutput | BeamSearchOutput:
    """Decodes an output for each input with a T5: the encoder runs once, every decoder
    layer's cross-attention keys and values are computed once, and beam search tiles
    them with the beams without ever reordering them.

    Args:
      model: a `models.T5`.
      inputs_BS: int [B, S] encoder inputs; `inputs_valid_BS` bool [B, S], False for
        padding (default all True).
      config, rng: as in `generate_gpt`; new tokens are counted after the decoder's
        start token.
    """
    _check_decode_args(config, rng)
    inputs_BS = jnp.asarray(inputs_BS)
    if inputs_BS.ndim != 2:
        raise ValueError(f"inputs_BS must have shape [B, S]; got {inputs_BS.shape}")
    window = model.config.max_seq_len
    if inputs_BS.shape[1] > window:
        raise ValueError(f"inputs ({inputs_BS.shape[1]} tokens) exceed the model's context "
                         f"window of {window}")
    check_context_window(1, config.max_new_tokens, window)
    if inputs_valid_BS is not None:
        inputs_valid_BS = jnp.asarray(inputs_valid_BS, jnp.bool_)
    graphdef, params = nnx.split(model)
    return _generate_t5(graphdef, params, inputs_BS, inputs_valid_BS, rng, config=config)


# Checkpoints.


@dataclasses.dataclass(frozen=True)
class LoadedModel:
    """A checkpoint's model, split into its static graph and its parameters, with its
    tokenizer and the special token ids that decoding needs."""

    graphdef: nnx.GraphDef
    params: Any
    config: GPTConfig | T5Config
    tokenizer: CharTokenizer | Seq2SeqVocabulary
    step: int

    @property
    def family(self) -> str:
        """"gpt" (continues text) or "t5" (spelling in, phonemes out)."""
        return "t5" if isinstance(self.config, T5Config) else "gpt"

    @property
    def eos_id(self) -> int | None:
        """The end-of-sequence id, or None (the character GPT has none)."""
        return EOS_ID if self.family == "t5" else None

    @property
    def pad_id(self) -> int:
        return PAD_ID if self.family == "t5" else self.tokenizer.pad_id

    @property
    def model(self) -> GPT | T5:
        return nnx.merge(self.graphdef, self.params)


def _checkpoint_path(directory: str | os.PathLike[str]) -> str:
    """Accepts either a run's out_dir or its checkpoint/ folder."""
    nested = os.path.join(os.fspath(directory), CHECKPOINT_DIR)
    return nested if os.path.isdir(nested) else os.fspath(directory)


def load_model(directory: str | os.PathLike[str]) -> LoadedModel:
    """Loads the newest checkpoint's parameters, config and tokenizer (a GPT from
    `flaxzoo train` or a T5 from `flaxzoo task pronounce`)."""
    path = _checkpoint_path(directory)
    meta = ckpt.load_metadata(path)
    try:
        tokenizer_format = str(meta.tokenizer_json)
        if f'"{VOCABULARY_FORMAT}"' in tokenizer_format:
            config = T5Config.from_dict(meta.model_config)
            tokenizer = Seq2SeqVocabulary.from_json(meta.tokenizer_json)
            build = lambda: T5(config, rngs=nnx.Rngs(0))
        elif '"flaxzoo.CharTokenizer"' in tokenizer_format:
            config = GPTConfig.from_dict(meta.model_config)
            tokenizer = CharTokenizer.from_json(meta.tokenizer_json)
            build = lambda: GPT(config, rngs=nnx.Rngs(0))
        else:
            raise ValueError("it holds neither a GPT (flaxzoo train) nor a T5 (flaxzoo task "
                             "pronounce); encoder-only runs cannot generate")
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {directory} cannot generate: {err}") from None
    abstract = nnx.eval_shape(build)
    graphdef, abstract_params = nnx.split(abstract)
    params = ckpt.restore_params(path, abstract_params, meta.step)
    return LoadedModel(graphdef=graphdef, params=params, config=config,
                       tokenizer=tokenizer, step=meta.step)


@dataclasses.dataclass(frozen=True)
class Generation:
    """One continuation: its text, its token ids (EOS and padding removed) and, from
    beam search, its length-normalised score and summed log-probability."""

    text: str
    token_ids: tuple[int, ...]
    score: float | None = None
    log_prob: float | None = None


def _encode_prompts(loaded: LoadedModel, prompts: Sequence[str]) -> list[np.ndarray]:
    if isinstance(prompts, str) or not prompts:
        raise ValueError("prompts must be a non-empty list of strings")
    encoded = []
    for prompt in prompts:
        if not prompt:
            raise ValueError("prompt must not be empty")
        if loaded.family == "t5":
            encoded.append(loaded.tokenizer.encode_word(prompt))
            continue
        ids = loaded.tokenizer.encode(prompt, unknown="replace")
        unknown = np.flatnonzero(ids == loaded.tokenizer.unk_id)
        if unknown.size:
            i = int(unknown[0])
            raise ValueError(f"prompt: character {prompt[i]!r} at index {i} is not among the "
                             f"{len(loaded.tokenizer.chars)} characters the model was "
                             f"trained on")
        encoded.append(ids)
    return encoded


def _decode(loaded: LoadedModel, ids: np.ndarray, length: int) -> tuple[str, tuple[int, ...]]:
    ids = [int(i) for i in ids[:length]]
    if loaded.eos_id is not None and ids and ids[-1] == loaded.eos_id:
        ids = ids[:-1]
    if loaded.family == "t5":
        return " ".join(loaded.tokenizer.decode(ids)), tuple(ids)
    return loaded.tokenizer.decode(np.asarray(ids, np.int32)), tuple(ids)


def generate_text(loaded: LoadedModel, prompts: Sequence[str], config: DecodeConfig, *,
                  seed: int = 0) -> list[list[Generation]]:
    """Continuations of each prompt: one per prompt for greedy decoding and sampling,
    the n-best list (best first) for beam search.

    For a GPT the prompts are text and the continuation is text; for the pronunciation
    T5 each prompt is a word (letters and apostrophes) and the continuation its
    phonemes, separated by spaces. Prompts of different lengths are batched with
    padding. `config` should use the model's `eos_id` and `pad_id`.

    Raises ValueError for an empty prompt, a character the model does not know, or a
    prompt plus new tokens beyond the model's context window, before any compute.
    """
    encoded = _encode_prompts(loaded, prompts)
    rng = None
    if isinstance(config, SamplingConfig) and not config.is_greedy:
        rng = jax.random.key(seed)
    window = loaded.config.max_seq_len
    if loaded.family == "t5":
        longest = max(len(ids) for ids in encoded)
        if longest > window:
            raise ValueError(f"prompt: a word of {longest - 1} letters does not fit the "
                             f"model's {window}-token inputs")
        check_context_window(1, config.max_new_tokens, window)
        inputs_BS, valid_BS = left_pad([ids[::-1] for ids in encoded], pad_id=PAD_ID)
        # Encoder inputs are right-padded (as in training): reverse, left-pad, reverse.
        inputs_BS, valid_BS = inputs_BS[:, ::-1], valid_BS[:, ::-1]
        _check_decode_args(config, rng)
        out = _generate_t5(loaded.graphdef, loaded.params, inputs_BS, valid_BS, rng,
                           config=config)
    else:
        prompt_BP, valid_BP = left_pad(encoded, pad_id=loaded.pad_id)
        check_context_window(prompt_BP.shape[1], config.max_new_tokens, window)
        _check_decode_args(config, rng)
        out = _generate_gpt(loaded.graphdef, loaded.params, prompt_BP, valid_BP, rng,
                            config=config)
    out = jax.device_get(out)
    results = []
    for row in range(len(prompts)):
        if isinstance(out, BeamSearchOutput):
            hypotheses = []
            for w in range(out.tokens_BWL.shape[1]):
                if not np.isfinite(out.scores_BW[row, w]):
                    continue  # an empty slot (fewer hypotheses than beams)
                text, ids = _decode(loaded, out.tokens_BWL[row, w], out.lengths_BW[row, w])
                hypotheses.append(Generation(text=text, token_ids=ids,
                                             score=float(out.scores_BW[row, w]),
                                             log_prob=float(out.log_probs_BW[row, w])))
            results.append(hypotheses)
        else:
            text, ids = _decode(loaded, out.tokens_BL[row], out.lengths_B[row])
            results.append([Generation(text=text, token_ids=ids)])
    return results
