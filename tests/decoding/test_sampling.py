"""Greedy decoding and sampling with hand-written step functions whose answer is known.

Dimension key: B batch, P prompt length, T tokens per step call, S cache length,
L new tokens, V vocab.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flaxzoo.decoding import (
    PAD_POSITION,
    BeamSearchConfig,
    SampleOutput,
    SamplingConfig,
    SamplingState,
    generate,
    greedy,
    left_pad,
    make_generate_fn,
    sample,
)

V = 11


# Step functions.


def increment_step(tokens_BT, cache, positions_BT, context):
    """Next token = (token + 1) % V, with a clear margin; the cache is threaded as is."""
    del positions_BT, context
    return 5.0 * jax.nn.one_hot((tokens_BT + 1) % V, V), cache


def table_step(tokens_BT, cache, positions_BT, context):
    """Logits looked up in `context`: a [S, V, V] table indexed by position and token."""
    return context[positions_BT, tokens_BT], cache


def buffer_step(tokens_BT, cache_BS, positions_BT, context):
    """Writes tokens into the cache at their positions, then predicts from the cache.

    Padding (negative positions) is not written. The next token after position t is
    sum_{s <= t} (s + 1) * token[s] mod V, read from the cache, so it is right only if
    every real token landed at its true position.
    """
    del context
    batch, cache_len = cache_BS.shape
    index_BT = jnp.where(positions_BT >= 0, positions_BT, cache_len)
    cache_BS = cache_BS.at[jnp.arange(batch)[:, None], index_BT].set(tokens_BT, mode="drop")
    s_S = jnp.arange(cache_len)
    seen_BTS = s_S[None, None, :] <= positions_BT[:, :, None]
    weighted_BTS = jnp.where(seen_BTS, (s_S + 1) * cache_BS[:, None, :], 0)
    return 5.0 * jax.nn.one_hot(weighted_BTS.sum(-1) % V, V), cache_BS


# Numpy references.


def _np_buffer_recurrence(prompt, max_new_tokens):
    row = list(prompt)
    for _ in range(max_new_tokens):
        row.append(sum((s + 1) * t for s, t in enumerate(row)) % V)
    return row[len(prompt):]


def _np_greedy(table_SVV, prompt, max_new_tokens, *, penalty=1.0, eos_id=None,
               min_new_tokens=0, pad_id=0):
    """Greedy decoding of `table_step` for one prompt of real tokens: (tokens, length)."""
    sequence, seen, new = list(prompt), set(prompt), []
    for i in range(max_new_tokens):
        logits_V = np.array(table_SVV[len(sequence) - 1, sequence[-1]], np.float32)
        for token in seen:
            x = logits_V[token]
            logits_V[token] = x / np.float32(penalty) if x > 0 else x * np.float32(penalty)
        if i < min_new_tokens:
            logits_V[eos_id] = -np.inf
        token = int(np.argmax(logits_V))
        sequence.append(token)
        seen.add(token)
        new.append(token)
        if token == eos_id:
            break
    return new + [pad_id] * (max_new_tokens - len(new)), len(new)


def _table(seed, cache_len=10, scale=1.0):
    """float32 [S, V, V] logits table (numpy: no PRNG program to compile)."""
    rng = np.random.default_rng(seed)
    return jnp.asarray(scale * rng.normal(size=(cache_len, V, V)), jnp.float32)


def _first_eos_lengths(tokens_BL, eos_id):
    is_eos_BL = np.asarray(tokens_BL) == eos_id
    return np.where(is_eos_BL.any(axis=1), is_eos_BL.argmax(axis=1) + 1, tokens_BL.shape[1])


def _jit(step_fn, config):
    """`sample` for one step function and config, jitted (no donation)."""
    return jax.jit(functools.partial(sample, step_fn, config=config))


_PROMPT_BP = jnp.array([[1, 2, 3], [9, 10, 0]], jnp.int32)
_GREEDY5 = SamplingConfig(max_new_tokens=5, temperature=0.0)
_greedy_increment = _jit(increment_step, _GREEDY5)
_greedy_table = _jit(table_step, _GREEDY5)
_sample_table = _jit(table_step, SamplingConfig(max_new_tokens=5, temperature=1.0))


# Known outputs and the step-function schedule.


def test_greedy_increment_gives_known_sequence():
    out = _greedy_increment(_PROMPT_BP, jnp.zeros(()))
    assert isinstance(out, SampleOutput)
    assert out.tokens_BL.dtype == jnp.int32 and out.tokens_BL.shape == (2, 5)
    np.testing.assert_array_equal(out.tokens_BL, [[4, 5, 6, 7, 8], [1, 2, 3, 4, 5]])
    np.testing.assert_array_equal(out.lengths_B, [5, 5])
    # `greedy` is the same thing.
    out = jax.jit(functools.partial(greedy, increment_step, max_new_tokens=5))(
        _PROMPT_BP, jnp.zeros(()))
    np.testing.assert_array_equal(out.tokens_BL, [[4, 5, 6, 7, 8], [1, 2, 3, 4, 5]])


@pytest.mark.parametrize("max_new_tokens", [1, 2, 6])
def test_cache_sees_prompt_then_each_token_at_its_position(max_new_tokens):
    prompts = [[3, 1, 4, 1], [5, 9, 2, 6], [0, 0, 0, 7]]
    # Exactly P + L - 1 slots: the last new token is never written.
    cache_BS = jnp.full((3, 4 + max_new_tokens - 1), -1, jnp.int32)
    out = jax.jit(functools.partial(greedy, buffer_step, max_new_tokens=max_new_tokens))(
        jnp.array(prompts, jnp.int32), cache_BS)
    np.testing.assert_array_equal(
        out.tokens_BL, [_np_buffer_recurrence(p, max_new_tokens) for p in prompts])


def _recording(step_fn, calls):
    """`step_fn` that also appends (tokens_BT, positions_BT) of every call to `calls`."""
    def record(tokens_BT, positions_BT):
        calls.append((np.asarray(tokens_BT), np.asarray(positions_BT)))

    def recording_step(tokens_BT, cache, positions_BT, context):
        jax.debug.callback(record, tokens_BT, positions_BT, ordered=True)
        return step_fn(tokens_BT, cache, positions_BT, context)

    return recording_step


def test_prefill_once_then_one_token_at_a_time():
    calls = []
    config = SamplingConfig(max_new_tokens=4, temperature=0.0)
    out = _jit(_recording(increment_step, calls), config)(_PROMPT_BP, jnp.zeros(()))
    jax.effects_barrier()
    assert len(calls) == 4  # One prefill and L - 1 = 3 single-token steps.
    tokens_BP, positions_BP = calls[0]
    np.testing.assert_array_equal(tokens_BP, _PROMPT_BP)
    np.testing.assert_array_equal(positions_BP, [[0, 1, 2], [0, 1, 2]])
    for i, (tokens_B1, positions_B1) in enumerate(calls[1:]):
        np.testing.assert_array_equal(tokens_B1, np.asarray(out.tokens_BL)[:, i:i + 1])
        np.testing.assert_array_equal(positions_B1, [[3 + i], [3 + i]])
        assert tokens_B1.dtype == np.int32 and positions_B1.dtype == np.int32


def test_left_padded_positions_seen_by_the_step_function():
    calls = []
    prompt_BP, valid_BP = left_pad([[4, 5, 6], [7], [8, 9]], pad_id=3)
    np.testing.assert_array_equal(prompt_BP, [[4, 5, 6], [3, 3, 7], [3, 8, 9]])
    config = SamplingConfig(max_new_tokens=3, temperature=0.0)
    out = _jit(_recording(increment_step, calls), config)(
        prompt_BP, jnp.zeros(()), prompt_valid_BP=valid_BP)
    jax.effects_barrier()
    assert len(calls) == 3
    np.testing.assert_array_equal(calls[0][0], prompt_BP)
    p = PAD_POSITION
    np.testing.assert_array_equal(calls[0][1], [[0, 1, 2], [p, p, 0], [p, 0, 1]])
    # New token i of a row goes at (its number of real tokens) + i.
    for i, (tokens_B1, positions_B1) in enumerate(calls[1:]):
        np.testing.assert_array_equal(tokens_B1[:, 0], np.asarray(out.tokens_BL)[:, i])
        np.testing.assert_array_equal(positions_B1[:, 0], np.array([3, 1, 2]) + i)
    # The first new token follows each row's last real token.
    np.testing.assert_array_equal(out.tokens_BL, [[7, 8, 9], [8, 9, 10], [10, 0, 1]])


def test_context_is_passed_through():
    table_SVV = _table(0)
    out = _greedy_table(_PROMPT_BP, None, context=table_SVV)
    expected = [_np_greedy(np.asarray(table_SVV), row, 5)[0] for row in np.asarray(_PROMPT_BP)]
    np.testing.assert_array_equal(out.tokens_BL, expected)


# Left padding: each row generates what its prompt generates alone.


_PROMPTS = [[3, 1, 4, 1, 5], [9], [2, 6], [5, 3, 5, 8]]


def test_left_padded_batch_equals_each_prompt_alone_buffer():
    max_new = 4
    generate_fn = jax.jit(functools.partial(greedy, buffer_step, max_new_tokens=max_new))
    prompt_BP, valid_BP = left_pad(_PROMPTS, pad_id=7)
    cache_BS = jnp.full((len(_PROMPTS), prompt_BP.shape[1] + max_new - 1), 5, jnp.int32)
    batch_BL = generate_fn(prompt_BP, cache_BS, prompt_valid_BP=valid_BP).tokens_BL
    expected_BL = [_np_buffer_recurrence(p, max_new) for p in _PROMPTS]
    np.testing.assert_array_equal(batch_BL, expected_BL)
    # Padding may sit anywhere: right- and middle-padded rows give the same tokens.
    right_BP = jnp.array([p + [7] * (5 - len(p)) for p in _PROMPTS], jnp.int32)
    right_valid_BP = jnp.array([[True] * len(p) + [False] * (5 - len(p)) for p in _PROMPTS])
    middle_BP = jnp.array([p[:1] + [7] * (5 - len(p)) + p[1:] for p in _PROMPTS], jnp.int32)
    middle_valid_BP = jnp.array([[True] + [False] * (5 - len(p)) + [True] * (len(p) - 1)
                                 for p in _PROMPTS])
    for tokens_BP, mask_BP in [(right_BP, right_valid_BP), (middle_BP, middle_valid_BP)]:
        np.testing.assert_array_equal(
            generate_fn(tokens_BP, cache_BS, prompt_valid_BP=mask_BP).tokens_BL, expected_BL)
    # Solo run of the longest prompt and of a short one (no padding at all).
    for b in (0, 1):
        prompt_1P = jnp.array([_PROMPTS[b]], jnp.int32)
        cache_1S = jnp.full((1, len(_PROMPTS[b]) + max_new - 1), 5, jnp.int32)
        np.testing.assert_array_equal(generate_fn(prompt_1P, cache_1S).tokens_BL[0],
                                      batch_BL[b])


def test_left_padded_batch_equals_each_prompt_alone_table():
    table = np.asarray(_table(1))
    prompt_BP, valid_BP = left_pad(_PROMPTS, pad_id=0)
    out = _greedy_table(prompt_BP, None, prompt_valid_BP=valid_BP, context=jnp.asarray(table))
    np.testing.assert_array_equal(out.tokens_BL, [_np_greedy(table, p, 5)[0] for p in _PROMPTS])
    # Without the validity mask the padding would be read as tokens and change rows 1-3.
    unmasked = _greedy_table(prompt_BP, None, context=jnp.asarray(table))
    assert not np.array_equal(unmasked.tokens_BL[1:], out.tokens_BL[1:])


# Sampling against greedy, and randomness.


def test_temperature_zero_is_greedy():
    table_SVV = _table(2)
    expected_BL = _greedy_table(_PROMPT_BP, None, context=table_SVV).tokens_BL
    config = SamplingConfig(max_new_tokens=5, temperature=0, top_k=3, top_p=0.5)
    for rng in (None, jax.random.key(0)):
        got = _jit(table_step, config)(_PROMPT_BP, None, rng=rng, context=table_SVV)
        np.testing.assert_array_equal(got.tokens_BL, expected_BL)


def test_top_k_one_equals_greedy():
    table_SVV = _table(3)
    expected_BL = _greedy_table(_PROMPT_BP, None, context=table_SVV).tokens_BL
    sample_fn = _jit(table_step, SamplingConfig(max_new_tokens=5, temperature=1.5, top_k=1))
    for seed in range(3):
        got = sample_fn(_PROMPT_BP, None, rng=jax.random.key(seed), context=table_SVV)
        np.testing.assert_array_equal(got.tokens_BL, expected_BL)


def test_fixed_key_reproduces_and_different_keys_differ():
    table_SVV = _table(4, scale=0.1)  # Nearly flat: many different sequences are likely.
    draw = functools.partial(_sample_table, _PROMPT_BP, None, context=table_SVV)
    a_BL = draw(rng=jax.random.key(0)).tokens_BL
    np.testing.assert_array_equal(a_BL, draw(rng=jax.random.key(0)).tokens_BL)
    assert not np.array_equal(a_BL, draw(rng=jax.random.key(1)).tokens_BL)
    # Every step draws fresh randomness: rows are not one repeated token.
    assert len(np.unique(np.asarray(a_BL))) > 2
    # Legacy uint32 keys work as well.
    np.testing.assert_array_equal(draw(rng=jax.random.PRNGKey(5)).tokens_BL,
                                  draw(rng=jax.random.PRNGKey(5)).tokens_BL)


def test_sampled_frequencies_over_the_loop_match_filtered_distribution():
    logits_V = np.array([1.0, 2.0, -1.0, 0.5, 1.5, -2.0, 0.0, 0.2, -0.3, 0.7, 1.1], np.float32)
    temperature, top_k, top_p, batch, new = 0.8, 5, 0.85, 1_000, 6

    def constant_step(tokens_BT, cache, positions_BT, context):
        del positions_BT, context
        return jnp.broadcast_to(jnp.asarray(logits_V), tokens_BT.shape + (V,)), cache

    config = SamplingConfig(max_new_tokens=new, temperature=temperature, top_k=top_k,
                            top_p=top_p)
    prompt_BP = jnp.zeros((batch, 2), jnp.int32)
    tokens_BL = np.asarray(
        make_generate_fn(constant_step, config)(prompt_BP, None, rng=jax.random.key(9)).tokens_BL)
    # Numpy: temperature, top-k (5 best: 1, 4, 10, 0, 9), then top-p on what is left.
    scaled_V = logits_V.astype(np.float64) / temperature
    kept_V = scaled_V >= np.sort(scaled_V)[-top_k]
    p_V = np.where(kept_V, np.exp(scaled_V), 0.0)
    p_V /= p_V.sum()
    order_V = np.argsort(-p_V)
    mass_above_V = np.cumsum(p_V[order_V]) - p_V[order_V]
    kept_V[order_V[mass_above_V >= top_p]] = False
    assert kept_V.sum() == 4  # Top-p dropped one of the five.
    p_V = np.where(kept_V, p_V, 0.0)
    p_V /= p_V.sum()
    tokens = tokens_BL.ravel()
    counts_V = np.bincount(tokens, minlength=V)
    n = tokens.size
    np.testing.assert_array_equal(counts_V[~kept_V], 0)
    sigma_V = np.sqrt(n * p_V[kept_V] * (1 - p_V[kept_V]))
    assert (np.abs(counts_V[kept_V] - n * p_V[kept_V]) < 4.5 * sigma_V).all(), (counts_V, n * p_V)
    chi2 = (((counts_V[kept_V] - n * p_V[kept_V]) ** 2) / (n * p_V[kept_V])).sum()
    assert chi2 < 25.0, chi2  # dof 3: P(chi2 > 25) < 2e-5.
    # Steps draw independently (a fresh key each step): consecutive tokens agree with
    # probability sum(p^2), not 1.
    pairs = batch * (new - 1)
    agree = (tokens_BL[:, 1:] == tokens_BL[:, :-1]).sum()
    q = (p_V**2).sum()
    assert abs(agree - pairs * q) < 4.5 * np.sqrt(pairs * q * (1 - q)), (agree, pairs * q)


# EOS and padding.


def test_rows_that_finish_emit_pad_and_lengths_are_right():
    eos, pad = 5, 7
    prompt_BP, valid_BP = left_pad([[4], [1, 2], [6, 7]])
    config = SamplingConfig(max_new_tokens=6, temperature=0.0, eos_id=eos, pad_id=pad)
    out = _jit(increment_step, config)(prompt_BP, jnp.zeros(()), prompt_valid_BP=valid_BP)
    np.testing.assert_array_equal(out.tokens_BL, [[5, pad, pad, pad, pad, pad],
                                                  [3, 4, 5, pad, pad, pad],
                                                  [8, 9, 10, 0, 1, 2]])
    np.testing.assert_array_equal(out.lengths_B, [1, 3, 6])
    assert out.lengths_B.dtype == jnp.int32


def test_sampled_rows_emit_only_pad_after_eos():
    eos, pad, new = 3, 8, 8
    config = SamplingConfig(max_new_tokens=new, temperature=1.0, eos_id=eos, pad_id=pad)
    prompt_BP = jnp.tile(jnp.array([[1, 2]], jnp.int32), (64, 1))
    out = _jit(table_step, config)(prompt_BP, None, rng=jax.random.key(3),
                                   context=_table(5, scale=0.3))
    tokens_BL, lengths_B = np.asarray(out.tokens_BL), np.asarray(out.lengths_B)
    np.testing.assert_array_equal(lengths_B, _first_eos_lengths(tokens_BL, eos))
    # Some rows finish early, some run to the end: both cases are exercised.
    assert (lengths_B < new).any() and (lengths_B == new).any()
    after_eos_BL = np.arange(new)[None, :] >= lengths_B[:, None]
    assert (tokens_BL[after_eos_BL] == pad).all()
    assert (tokens_BL[~after_eos_BL] != pad).any()  # pad is an ordinary token before EOS.


def test_eos_in_the_prompt_does_not_stop_generation():
    config = SamplingConfig(max_new_tokens=5, temperature=0.0, eos_id=5, pad_id=0)
    out = _jit(increment_step, config)(jnp.array([[5, 1], [2, 5]], jnp.int32), jnp.zeros(()))
    np.testing.assert_array_equal(out.tokens_BL, [[2, 3, 4, 5, 0], [6, 7, 8, 9, 10]])
    np.testing.assert_array_equal(out.lengths_B, [4, 5])


def eos_loving_step(tokens_BT, cache, positions_BT, context):
    """EOS (V - 1) first, (token + 1) % V second: min_new_tokens decides the length."""
    logits_BTV, cache = increment_step(tokens_BT, cache, positions_BT, context)
    return logits_BTV + 8.0 * jax.nn.one_hot(V - 1, V), cache


@pytest.mark.parametrize("min_new_tokens", [0, 1, 3, 6])
def test_min_new_tokens_holds_eos_back_exactly_that_long(min_new_tokens):
    eos, pad, new = V - 1, 0, 6
    config = SamplingConfig(max_new_tokens=new, temperature=0.0, eos_id=eos, pad_id=pad,
                            min_new_tokens=min_new_tokens)
    out = _jit(eos_loving_step, config)(jnp.array([[1], [3]], jnp.int32), jnp.zeros(()))
    m = min_new_tokens
    expected_BL = [[2 + i for i in range(m)] + [eos], [4 + i for i in range(m)] + [eos]]
    expected_BL = [(row + [pad] * new)[:new] for row in expected_BL]
    np.testing.assert_array_equal(out.tokens_BL, expected_BL)
    np.testing.assert_array_equal(out.lengths_B, [min(m + 1, new)] * 2)


def test_min_new_tokens_when_sampling():
    eos, new, m = 2, 6, 3

    def eos_likely_step(tokens_BT, cache, positions_BT, context):
        del positions_BT, context
        return jnp.broadcast_to(2.0 * jax.nn.one_hot(eos, V), tokens_BT.shape + (V,)), cache

    config = SamplingConfig(max_new_tokens=new, temperature=1.0, eos_id=eos, pad_id=0,
                            min_new_tokens=m)
    out = _jit(eos_likely_step, config)(jnp.zeros((256, 1), jnp.int32), None,
                                        rng=jax.random.key(0))
    tokens_BL = np.asarray(out.tokens_BL)
    assert (tokens_BL[:, :m] != eos).all()
    # P(EOS) = e^2 / (e^2 + 10) ~ 0.42 once allowed.
    assert 0.3 < (tokens_BL[:, m] == eos).mean() < 0.55
    np.testing.assert_array_equal(out.lengths_B, _first_eos_lengths(tokens_BL, eos))


# Repetition penalty in the loop.


_greedy_penalty4 = _jit(table_step, SamplingConfig(max_new_tokens=5, temperature=0.0,
                                                   repetition_penalty=4.0))


def test_repetition_penalty_known_sequences():
    # Constant logits: token 0 best, then 1, 2, 3; token 4 negative.
    logits_V = np.array([3.0, 2.0, 1.0, 0.5, -0.5] + [-3.0] * (V - 5), np.float32)
    table = np.broadcast_to(logits_V, (10, V, V))
    prompts = [[0, 3], [3], [5, 5, 0]]
    # left_pad fills with token 0, the best one: padding must not count as seen.
    prompt_BP, valid_BP = left_pad(prompts, pad_id=0)
    out = _greedy_penalty4(prompt_BP, None, prompt_valid_BP=valid_BP, context=jnp.asarray(table))
    # Row 0: 0 and 3 seen -> 0: 0.75, 1: 2 wins; then 2 (1.0); then 0 (0.75, once only).
    # Row 1: only 3 seen (not the padding 0s) -> 0 wins, then 1, then 2, then 0 again.
    # Row 2: 5 and 0 seen, each once despite repeats -> as row 0.
    np.testing.assert_array_equal(out.tokens_BL, [[1, 2, 0, 0, 0], [0, 1, 2, 0, 0],
                                                  [1, 2, 0, 0, 0]])
    np.testing.assert_array_equal(out.tokens_BL,
                                  [_np_greedy(table, p, 5, penalty=4.0)[0] for p in prompts])
    # Negative logits are multiplied: 0 at -1 becomes -4, below 1 (-1.5) and 2 (-2.1);
    # dividing would make it -0.25 and repeat it forever.
    logits_V = np.array([-1.0, -1.5, -2.1, -4.5] + [-5.0] * (V - 4), np.float32)
    table = np.broadcast_to(logits_V, (10, V, V))
    out = _greedy_penalty4(prompt_BP, None, prompt_valid_BP=valid_BP, context=jnp.asarray(table))
    np.testing.assert_array_equal(out.tokens_BL, [[1, 2, 0, 0, 0], [0, 1, 2, 0, 0],
                                                  [1, 2, 0, 0, 0]])
    np.testing.assert_array_equal(out.tokens_BL,
                                  [_np_greedy(table, p, 5, penalty=4.0)[0] for p in prompts])


def test_repetition_penalty_matches_numpy_on_a_random_table():
    # Temperature 0 with a penalty is the numpy greedy loop with the CTRL rule. Tokens 1
    # and 2 are favoured everywhere, so plain greedy repeats them; about half the
    # logits are negative (multiplied), the rest positive (divided).
    bias_V = np.array([0.0, 1.5, 1.0] + [-0.5] * (V - 3), np.float32)
    table = np.asarray(_table(8)) + bias_V
    prompts = [[3, 1, 4, 1, 5], [9], [2, 6]]
    prompt_BP, valid_BP = left_pad(prompts, pad_id=1)  # Padding with a favoured token.
    plain = [_np_greedy(table, p, 5)[0] for p in prompts]
    results = []
    for penalty in (1.8, 3.0):
        config = SamplingConfig(max_new_tokens=5, temperature=0.0, repetition_penalty=penalty)
        out = _jit(table_step, config)(prompt_BP, None, prompt_valid_BP=valid_BP,
                                       context=jnp.asarray(table))
        expected = [_np_greedy(table, p, 5, penalty=penalty)[0] for p in prompts]
        np.testing.assert_array_equal(out.tokens_BL, expected)
        results.append(expected)
    # The penalty matters here, and its value too.
    assert results[0] != plain and results[1] != plain and results[0] != results[1]


# Early exit.


def _counting(step_fn, counter):
    def count(_):
        counter.append(1)

    def counting_step(tokens_BT, cache, positions_BT, context):
        jax.debug.callback(count, positions_BT)
        return step_fn(tokens_BT, cache, positions_BT, context)

    return counting_step


def test_early_exit_matches_scan_and_stops_early():
    eos, pad, new = 5, 7, 8
    prompt_BP, valid_BP = left_pad([[4], [1, 2], [9, 0]])
    out, calls = {}, {}
    for early_exit in (False, True):
        calls[early_exit] = []
        config = SamplingConfig(max_new_tokens=new, temperature=0.0, eos_id=eos, pad_id=pad,
                                early_exit=early_exit)
        out[early_exit] = _jit(_counting(increment_step, calls[early_exit]), config)(
            prompt_BP, jnp.zeros(()), prompt_valid_BP=valid_BP)
    jax.effects_barrier()
    np.testing.assert_array_equal(out[True].tokens_BL, out[False].tokens_BL)
    np.testing.assert_array_equal(out[True].lengths_B, [1, 3, 5])
    np.testing.assert_array_equal(out[True].lengths_B, out[False].lengths_B)
    # The last row finishes with new token 4: one prefill and 4 steps instead of 7.
    assert len(calls[False]) == new and len(calls[True]) == 5


def test_early_exit_matches_scan_when_sampling():
    eos, new = 4, 10
    prompt_BP, valid_BP = left_pad([[1, 2, 3], [4], [5, 6], [7, 8, 9], [1], [2, 2]] * 4)
    table_SVV = _table(7, cache_len=12, scale=0.5)
    outs = []
    for early_exit in (False, True):
        config = SamplingConfig(max_new_tokens=new, temperature=1.0, top_k=8, top_p=0.95,
                                repetition_penalty=1.2, eos_id=eos, pad_id=0,
                                early_exit=early_exit)
        outs.append(_jit(table_step, config)(prompt_BP, None, rng=jax.random.key(11),
                                             prompt_valid_BP=valid_BP, context=table_SVV))
    np.testing.assert_array_equal(outs[0].tokens_BL, outs[1].tokens_BL)
    np.testing.assert_array_equal(outs[0].lengths_B, outs[1].lengths_B)
    lengths_B = np.asarray(outs[0].lengths_B)
    assert len(np.unique(lengths_B)) > 2  # Rows finish at different times.


# Compilation: once per shape.


def test_make_generate_fn_traces_once_per_shape():
    traced_shapes = []

    def counting_step(tokens_BT, cache, positions_BT, context):
        traced_shapes.append(tokens_BT.shape)  # Runs only while tracing.
        return increment_step(tokens_BT, cache, positions_BT, context)

    generate_fn = make_generate_fn(counting_step, SamplingConfig(max_new_tokens=3,
                                                                 temperature=0.0))
    # The cache is donated: a fresh one for every call.
    a = generate_fn(jnp.array([[1, 2]]), jnp.zeros(()))
    b = generate_fn(jnp.array([[7, 8]]), jnp.zeros(()))
    np.testing.assert_array_equal(a.tokens_BL, [[3, 4, 5]])
    np.testing.assert_array_equal(b.tokens_BL, [[9, 10, 0]])
    # One trace: the prefill call [1, 2] and the loop body [1, 1].
    assert traced_shapes == [(1, 2), (1, 1)]
    generate_fn(jnp.array([[1, 2, 3]]), jnp.zeros(()))
    assert traced_shapes == [(1, 2), (1, 1), (1, 3), (1, 1)]


@pytest.mark.filterwarnings("ignore:Some donated buffers were not usable")
def test_make_generate_fn_sampling_traces_once_for_new_keys_and_masks():
    traces = []

    def counting_step(tokens_BT, cache, positions_BT, context):
        traces.append(tokens_BT.shape)
        return table_step(tokens_BT, cache, positions_BT, context)

    config = SamplingConfig(max_new_tokens=4, temperature=1.0, eos_id=1, early_exit=True)
    generate_fn = make_generate_fn(counting_step, config)
    table_SVV = _table(8, scale=0.2)
    prompt_BP, valid_BP = left_pad([[1, 2], [3]])
    a = generate_fn(prompt_BP, jnp.zeros((2, 3)), rng=jax.random.key(0),
                    prompt_valid_BP=valid_BP, context=table_SVV)
    b = generate_fn(prompt_BP[::-1], jnp.zeros((2, 3)), rng=jax.random.key(1),
                    prompt_valid_BP=valid_BP[::-1], context=_table(9, scale=0.2))
    assert traces == [(2, 2), (2, 1)]
    assert a.tokens_BL.shape == b.tokens_BL.shape == (2, 4)


def test_outer_jit_traces_once_per_shape_with_params_as_arguments():
    traces = []
    config = SamplingConfig(max_new_tokens=5, temperature=1.0, top_k=1)

    @jax.jit
    def model_generate(params_SVV, prompt_BP, rng):
        traces.append(prompt_BP.shape)

        def step_fn(tokens_BT, cache, positions_BT, context):
            # The model side closes over jit arguments, never over constants.
            return params_SVV[positions_BT, tokens_BT], cache

        return sample(step_fn, prompt_BP, None, config, rng=rng)

    params_SVV = _table(10)
    expected_BL = _greedy_table(_PROMPT_BP, None, context=params_SVV).tokens_BL
    np.testing.assert_array_equal(
        model_generate(params_SVV, _PROMPT_BP, jax.random.key(0)).tokens_BL, expected_BL)
    model_generate(_table(11), _PROMPT_BP[::-1], jax.random.key(1))
    assert traces == [(2, 3)]
    model_generate(params_SVV, _PROMPT_BP[:1], jax.random.key(0))
    assert traces == [(2, 3), (1, 3)]


# The loop state.


def test_sampling_state_is_a_pytree_with_named_fields():
    assert [f.name for f in dataclasses.fields(SamplingState)] == [
        "cache", "token_B", "position_B", "num_generated", "tokens_BL", "done_B", "seen_BV",
        "rng",
    ]
    state = SamplingState(
        cache={"k": jnp.zeros((2, 4))},
        token_B=jnp.zeros(2, jnp.int32),
        position_B=jnp.full(2, 3, jnp.int32),
        num_generated=jnp.zeros((), jnp.int32),
        tokens_BL=jnp.zeros((2, 5), jnp.int32),
        done_B=jnp.zeros(2, bool),
        seen_BV=jnp.zeros((2, V), bool),
        rng=jax.random.key(0),
    )
    assert len(jax.tree.leaves(state)) == 8
    moved = jax.tree.map(lambda x: x, state)
    assert isinstance(moved, SamplingState)
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.token_B = None  # type: ignore[misc]
    # Greedy keeps no key and no seen set: None is an empty subtree.
    assert len(jax.tree.leaves(dataclasses.replace(state, rng=None, seen_BV=None))) == 6


# Errors.


def _exploding_step(*args):
    raise AssertionError("step_fn must not be called")


@pytest.mark.parametrize(
    "prompt_BP, match",
    [
        (jnp.array([1, 2, 3]), "prompt_BP"),
        (jnp.zeros((1, 2, 3), jnp.int32), "prompt_BP"),
        (jnp.zeros((2, 0), jnp.int32), r"B >= 1 and P >= 1; got shape \(2, 0\)"),
        (jnp.zeros((0, 2), jnp.int32), r"B >= 1 and P >= 1; got shape \(0, 2\)"),
        (jnp.zeros((2, 3), jnp.float32), "prompt_BP must hold integer"),
    ],
)
def test_bad_prompt_is_refused(prompt_BP, match):
    with pytest.raises(ValueError, match=match):
        sample(_exploding_step, prompt_BP, None, _GREEDY5)


@pytest.mark.parametrize(
    "valid_BP",
    [
        jnp.ones((2, 2), bool),  # Wrong shape.
        jnp.ones((2,), bool),
        jnp.ones((2, 3), jnp.int32),  # Not bool.
    ],
)
def test_bad_prompt_valid_is_refused(valid_BP):
    with pytest.raises(ValueError, match="prompt_valid_BP"):
        sample(_exploding_step, _PROMPT_BP, None, _GREEDY5, prompt_valid_BP=valid_BP)


def test_row_without_a_real_token_is_refused():
    valid_BP = jnp.array([[True, True, True], [False, False, False]])
    with pytest.raises(ValueError, match="prompt_valid_BP: row 1 has no real token"):
        sample(_exploding_step, _PROMPT_BP, None, _GREEDY5, prompt_valid_BP=valid_BP)


@pytest.mark.parametrize(
    "fields, error, match",
    [
        (dict(max_new_tokens=0), ValueError, "SamplingConfig.max_new_tokens"),
        (dict(max_new_tokens=-1), ValueError, "SamplingConfig.max_new_tokens"),
        (dict(max_new_tokens=1.5), TypeError, "SamplingConfig.max_new_tokens"),
        (dict(max_new_tokens=True), TypeError, "SamplingConfig.max_new_tokens"),
        (dict(temperature=-1.0), ValueError, "SamplingConfig.temperature"),
        (dict(temperature=float("nan")), ValueError, "SamplingConfig.temperature"),
        (dict(temperature=float("inf")), ValueError, "SamplingConfig.temperature"),
        (dict(temperature=jnp.float32(1.0)), TypeError, "SamplingConfig.temperature"),
        (dict(top_k=0), ValueError, "SamplingConfig.top_k"),
        (dict(top_k=2.0), TypeError, "SamplingConfig.top_k"),
        (dict(top_p=0.0), ValueError, "SamplingConfig.top_p"),
        (dict(top_p=1.5), ValueError, "SamplingConfig.top_p"),
        (dict(top_p=float("nan")), ValueError, "SamplingConfig.top_p"),
        (dict(repetition_penalty=0.0), ValueError, "SamplingConfig.repetition_penalty"),
        (dict(repetition_penalty=-2.0), ValueError, "SamplingConfig.repetition_penalty"),
        (dict(min_new_tokens=-1, eos_id=1), ValueError, "SamplingConfig.min_new_tokens"),
        (dict(min_new_tokens=6, eos_id=1), ValueError, "SamplingConfig.min_new_tokens"),
        (dict(min_new_tokens=2), ValueError, "SamplingConfig.min_new_tokens needs an eos_id"),
        (dict(eos_id=-1), ValueError, "SamplingConfig.eos_id"),
        (dict(eos_id=1.0), TypeError, "SamplingConfig.eos_id"),
        (dict(pad_id=-1), ValueError, "SamplingConfig.pad_id"),
        (dict(early_exit=1), TypeError, "SamplingConfig.early_exit"),
    ],
)
def test_bad_config_field_is_named(fields, error, match):
    with pytest.raises(error, match=match):
        SamplingConfig(**{"max_new_tokens": 5, **fields})


def test_config_is_hashable_and_frozen():
    a = SamplingConfig(max_new_tokens=4, temperature=0.5, top_p=0.9)
    assert hash(a) == hash(SamplingConfig(max_new_tokens=4, temperature=0.5, top_p=0.9))
    assert a != SamplingConfig(max_new_tokens=4, temperature=0.5, top_p=0.8)
    assert SamplingConfig(max_new_tokens=1, temperature=0).is_greedy and not a.is_greedy
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.top_p = 0.5  # type: ignore[misc]
    with pytest.raises(TypeError):
        SamplingConfig(4)  # type: ignore[misc]  # Keyword-only.


@pytest.mark.parametrize("field", ["eos_id", "pad_id"])
def test_token_ids_outside_the_vocabulary_are_refused(field):
    config = SamplingConfig(max_new_tokens=3, temperature=0.0, **{field: V})
    with pytest.raises(ValueError, match=f"SamplingConfig.{field} must lie in \\[0, {V}\\)"):
        sample(increment_step, _PROMPT_BP, None, config)


def test_rng_and_config_type_are_checked():
    config = SamplingConfig(max_new_tokens=2, temperature=1.0)
    with pytest.raises(ValueError, match="rng"):
        sample(_exploding_step, _PROMPT_BP, None, config)
    with pytest.raises(ValueError, match="rng"):
        make_generate_fn(_exploding_step, config)(_PROMPT_BP, None)
    beam_config = BeamSearchConfig(max_new_tokens=2, beam_size=2)
    with pytest.raises(TypeError, match="config must be a SamplingConfig"):
        sample(_exploding_step, _PROMPT_BP, None, beam_config)
    with pytest.raises(TypeError, match="config"):
        generate(_exploding_step, _PROMPT_BP, None, {"max_new_tokens": 2})
    with pytest.raises(TypeError, match="config"):
        make_generate_fn(_exploding_step, {"max_new_tokens": 2})


def test_step_fn_contract_violations_are_named():
    def flat_logits_step(tokens_BT, cache, positions_BT, context):
        return jnp.zeros(tokens_BT.shape[:1] + (V,)), cache

    with pytest.raises(ValueError, match=r"logits of shape \[B, T, V\] = \[2, 3, V\]"):
        sample(flat_logits_step, _PROMPT_BP, None, _GREEDY5)

    def int_logits_step(tokens_BT, cache, positions_BT, context):
        return jnp.zeros(tokens_BT.shape + (V,), jnp.int32), cache

    with pytest.raises(ValueError, match="float logits"):
        sample(int_logits_step, _PROMPT_BP, None, _GREEDY5)

    def one_token_step(tokens_BT, cache, positions_BT, context):
        return jnp.zeros(tokens_BT.shape + (1,)), cache

    with pytest.raises(ValueError, match="V >= 2"):
        sample(one_token_step, _PROMPT_BP, None, _GREEDY5)

    def growing_cache_step(tokens_BT, cache, positions_BT, context):
        logits_BTV, _ = increment_step(tokens_BT, cache, positions_BT, context)
        return logits_BTV, jnp.concatenate([cache, tokens_BT], axis=1)

    with pytest.raises(ValueError, match="cache"):
        sample(growing_cache_step, _PROMPT_BP, jnp.zeros((2, 0), jnp.int32), _GREEDY5)

    def retyped_cache_step(tokens_BT, cache, positions_BT, context):
        logits_BTV, _ = increment_step(tokens_BT, cache, positions_BT, context)
        return logits_BTV, cache.astype(jnp.float32)

    with pytest.raises(ValueError, match="cache"):
        sample(retyped_cache_step, _PROMPT_BP, jnp.zeros((2, 4), jnp.int32), _GREEDY5)

    def restructured_cache_step(tokens_BT, cache, positions_BT, context):
        logits_BTV, _ = increment_step(tokens_BT, cache, positions_BT, context)
        return logits_BTV, {"k": cache}

    with pytest.raises(ValueError, match="cache"):
        sample(restructured_cache_step, _PROMPT_BP, jnp.zeros((2, 4)), _GREEDY5)
