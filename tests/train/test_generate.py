"""Generation from models: padded batches equal solo prompts for every position scheme,
one compilation per shape, the context window checked before any compute, and T5's
encoder context computed once.

Dimension key: B batch, P prompt length, S encoder length, L new tokens, W beams, V vocab.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from flaxzoo.decoding import BeamSearchConfig, SamplingConfig, left_pad
from flaxzoo.models import GPT, T5, GPTConfig, T5Config
from flaxzoo.train import generate as gen
from flaxzoo.train.generate import generate_gpt, generate_t5

V = 32
PROMPTS = [[5, 9, 3, 7, 1, 2], [11, 6, 30]]
GREEDY = SamplingConfig(max_new_tokens=6, temperature=0.0)
BEAM = BeamSearchConfig(max_new_tokens=5, beam_size=3, length_penalty=0.6, eos_id=3)


def _peaky(model, scale):
    """Multiplies every weight matrix by `scale`, so that logits are far apart and float
    rounding between batch shapes cannot flip a choice."""
    graphdef, state = nnx.split(model)
    state = jax.tree.map(lambda x: x * scale if x.ndim >= 2 else x, state)
    return nnx.merge(graphdef, state)


@functools.cache
def _gpt(position):
    config = GPTConfig.tiny(vocab_size=V, position=position, max_seq_len=24)
    return _peaky(GPT(config, rngs=nnx.Rngs(0)), 8.0)


@pytest.mark.parametrize("position", ["learned", "rotary", "alibi", "sinusoidal", "relative"])
def test_left_padded_batch_equals_each_prompt_alone(position):
    gpt = _gpt(position)
    prompt_BP, valid_BP = left_pad(PROMPTS)
    batch = generate_gpt(gpt, prompt_BP, GREEDY, prompt_valid_BP=valid_BP)
    # Beam search on the schemes the issue names (greedy covers all five).
    with_beams = gpt.config.position in ("learned", "rotary", "alibi")
    if with_beams:
        beams = generate_gpt(gpt, prompt_BP, BEAM, prompt_valid_BP=valid_BP)
    for row, prompt in enumerate(PROMPTS):
        alone = generate_gpt(gpt, jnp.asarray([prompt]), GREEDY)
        np.testing.assert_array_equal(batch.tokens_BL[row], alone.tokens_BL[0])
        if with_beams:
            alone_beams = generate_gpt(gpt, jnp.asarray([prompt]), BEAM)
            np.testing.assert_array_equal(beams.tokens_BWL[row], alone_beams.tokens_BWL[0])
            np.testing.assert_allclose(beams.scores_BW[row], alone_beams.scores_BW[0],
                                       atol=1e-5)


@pytest.mark.parametrize("position", ["learned", "alibi"])
def test_greedy_follows_the_full_forward_pass(position):
    """Each greedy token is the argmax of an uncached forward pass over prompt + output."""
    gpt = _gpt(position)
    prompt = PROMPTS[0]
    tokens = list(prompt) + [int(t) for t in generate_gpt(gpt, jnp.asarray([prompt]),
                                                          GREEDY).tokens_BL[0]]
    ids_1T = jnp.asarray([tokens])
    logits_1TV, _ = gpt(ids_1T, jnp.arange(len(tokens))[None])
    expected = np.argmax(np.asarray(logits_1TV[0, len(prompt) - 1:-1]), axis=-1)
    np.testing.assert_array_equal(tokens[len(prompt):], expected)


def test_beam_scores_are_the_model_log_probs():
    """A hypothesis' log-prob is the sum of the model's next-token log-probs along it."""
    gpt = _gpt("rotary")
    prompt = PROMPTS[1]
    out = generate_gpt(gpt, jnp.asarray([prompt]), BEAM)
    for w in range(BEAM.beam_size):
        n = int(out.lengths_BW[0, w])
        tokens = list(prompt) + [int(t) for t in out.tokens_BWL[0, w, :n]]
        logits_1TV, _ = gpt(jnp.asarray([tokens]), jnp.arange(len(tokens))[None])
        log_probs_TV = jax.nn.log_softmax(np.asarray(logits_1TV[0], np.float64), axis=-1)
        expected = sum(float(log_probs_TV[len(prompt) - 1 + i, tokens[len(prompt) + i]])
                       for i in range(n))
        assert float(out.log_probs_BW[0, w]) == pytest.approx(expected, abs=1e-4)
        assert float(out.scores_BW[0, w]) == pytest.approx(expected / n ** 0.6, abs=1e-4)


def test_second_call_with_new_prompts_of_the_same_shape_does_not_recompile():
    model = GPT(GPTConfig.tiny(vocab_size=V), rngs=nnx.Rngs(1))
    config = SamplingConfig(max_new_tokens=4, temperature=0.9, top_p=0.8)
    generate_gpt(model, jnp.asarray([[1, 2, 3]]), config, rng=jax.random.key(0))
    compiled = gen._generate_gpt._cache_size()
    out = generate_gpt(model, jnp.asarray([[7, 8, 9]]), config, rng=jax.random.key(1))
    assert out.tokens_BL.shape == (1, 4)
    assert gen._generate_gpt._cache_size() == compiled


def test_context_window_and_rng_are_checked_before_any_compute():
    model = GPT(GPTConfig.tiny(vocab_size=V), rngs=nnx.Rngs(1))  # max_seq_len 16
    compiled = gen._generate_gpt._cache_size()
    with pytest.raises(ValueError, match="context window of 16; at most 10 new tokens"):
        generate_gpt(model, jnp.zeros((1, 7), jnp.int32),
                     SamplingConfig(max_new_tokens=11, temperature=0.0))
    with pytest.raises(ValueError, match="rng must be a PRNG key"):
        generate_gpt(model, jnp.zeros((1, 7), jnp.int32), SamplingConfig(max_new_tokens=2))
    with pytest.raises(ValueError, match="rng must be None"):
        generate_gpt(model, jnp.zeros((1, 7), jnp.int32), GREEDY, rng=jax.random.key(0))
    assert gen._generate_gpt._cache_size() == compiled


@pytest.fixture(scope="module")
def t5():
    return _peaky(T5(T5Config.tiny(vocab_size=V), rngs=nnx.Rngs(2)), 2.0)


def test_t5_padded_inputs_equal_each_input_alone(t5):
    inputs = [[5, 9, 3, 7, 1], [11, 1]]
    # Encoder inputs right-padded, as in training.
    width = max(map(len, inputs))
    inputs_BS = jnp.asarray([x + [0] * (width - len(x)) for x in inputs])
    valid_BS = jnp.asarray([[True] * len(x) + [False] * (width - len(x)) for x in inputs])
    config = BeamSearchConfig(max_new_tokens=6, beam_size=3, eos_id=1)
    batch = generate_t5(t5, inputs_BS, config, inputs_valid_BS=valid_BS)
    greedy = generate_t5(t5, inputs_BS, GREEDY, inputs_valid_BS=valid_BS)
    for row, x in enumerate(inputs):
        alone = generate_t5(t5, jnp.asarray([x]), config)
        np.testing.assert_array_equal(batch.tokens_BWL[row], alone.tokens_BWL[0])
        np.testing.assert_allclose(batch.scores_BW[row], alone.scores_BW[0], atol=1e-5)
        np.testing.assert_array_equal(greedy.tokens_BL[row],
                                      generate_t5(t5, jnp.asarray([x]), GREEDY).tokens_BL[0])


def test_t5_greedy_follows_the_full_decoder_pass(t5):
    inputs_1S = jnp.asarray([[5, 9, 3, 7, 1]])
    new = [int(t) for t in generate_t5(t5, inputs_1S, GREEDY).tokens_BL[0]]
    decoder_in = jnp.asarray([[t5.config.decoder_start_id] + new[:-1]])
    logits_1TV = t5(inputs_1S, decoder_in)
    np.testing.assert_array_equal(new, np.argmax(np.asarray(logits_1TV[0]), axis=-1))


def test_t5_encoder_runs_once_per_generation(t5, monkeypatch):
    calls = []
    encode = T5.encode

    def counting_encode(self, *args, **kwargs):
        calls.append(1)
        return encode(self, *args, **kwargs)

    monkeypatch.setattr(T5, "encode", counting_encode)
    config = BeamSearchConfig(max_new_tokens=5, beam_size=2, eos_id=1, early_exit=True)
    generate_t5(t5, jnp.asarray([[3, 4, 1]]), config)  # traced afresh for this config
    assert len(calls) == 1
