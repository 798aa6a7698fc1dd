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

from flaxzoo.decoding import SamplingState, greedy, make_generate_fn, sample

V = 11


def increment_step(tokens_BT, cache, positions_BT, context):
    """Next token = (token + 1) % V, with a clear margin; the cache is threaded as is."""
    del positions_BT, context
    return 5.0 * jax.nn.one_hot((tokens_BT + 1) % V, V), cache


def table_step(tokens_BT, cache, positions_BT, context):
    """Logits looked up in `context`: a [V, S, V] table indexed by token and position."""
    return context[tokens_BT, positions_BT], cache


def buffer_step(tokens_BT, cache_BS, positions_BT, context):
    """Writes tokens into the cache at their positions, then predicts from the cache.

    The next token after position t is sum_{s <= t} (s + 1) * token[s] mod V, read from
    the cache, so it is right only if every token landed at its true position.
    """
    del context
    batch, cache_len = cache_BS.shape
    cache_BS = cache_BS.at[jnp.arange(batch)[:, None], positions_BT].set(
        tokens_BT, mode="promise_in_bounds"
    )
    s_S = jnp.arange(cache_len)
    seen_BTS = s_S[None, None, :] <= positions_BT[:, :, None]
    weighted_BTS = jnp.where(seen_BTS, (s_S + 1) * cache_BS[:, None, :], 0)
    return 5.0 * jax.nn.one_hot(weighted_BTS.sum(-1) % V, V), cache_BS


def _np_buffer_recurrence(prompt_BP, max_new_tokens):
    seq = [list(row) for row in np.asarray(prompt_BP)]
    for row in seq:
        for _ in range(max_new_tokens):
            row.append(sum((s + 1) * t for s, t in enumerate(row)) % V)
    return np.array([row[prompt_BP.shape[1]:] for row in seq])


def _table(seed, cache_len):
    """float32 [V, S, V] logits table (numpy: no PRNG program to compile)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=(V, cache_len, V)), jnp.float32)


_PROMPT_BP = jnp.array([[1, 2, 3], [9, 10, 0]], jnp.int32)
_greedy_increment = jax.jit(functools.partial(greedy, increment_step, max_new_tokens=5))
_greedy_table = jax.jit(functools.partial(greedy, table_step, max_new_tokens=5))


# Known outputs.


def test_greedy_increment_gives_known_sequence():
    out_BL = _greedy_increment(_PROMPT_BP, jnp.zeros(()))
    assert out_BL.dtype == jnp.int32 and out_BL.shape == (2, 5)
    np.testing.assert_array_equal(out_BL, [[4, 5, 6, 7, 8], [1, 2, 3, 4, 5]])


@pytest.mark.parametrize("max_new_tokens", [1, 2, 6])
def test_cache_sees_prompt_then_each_token_at_its_position(max_new_tokens):
    prompt_BP = jnp.array([[3, 1, 4, 1], [5, 9, 2, 6], [0, 0, 0, 7]], jnp.int32)
    # Exactly P + L - 1 slots: the last new token is never written.
    cache_BS = jnp.full((3, 4 + max_new_tokens - 1), -1, jnp.int32)
    out_BL = jax.jit(functools.partial(greedy, buffer_step, max_new_tokens=max_new_tokens))(
        prompt_BP, cache_BS
    )
    np.testing.assert_array_equal(out_BL, _np_buffer_recurrence(prompt_BP, max_new_tokens))


def test_prefill_once_then_one_token_at_a_time():
    calls = []

    def record(tokens_BT, positions_BT):
        calls.append((np.asarray(tokens_BT), np.asarray(positions_BT)))

    def recording_step(tokens_BT, cache, positions_BT, context):
        jax.debug.callback(record, tokens_BT, positions_BT, ordered=True)
        return increment_step(tokens_BT, cache, positions_BT, context)

    out_BL = jax.jit(functools.partial(greedy, recording_step, max_new_tokens=4))(
        _PROMPT_BP, jnp.zeros(())
    )
    jax.effects_barrier()
    assert len(calls) == 4  # One prefill and L - 1 = 3 single-token steps.
    tokens_BP, positions_BP = calls[0]
    np.testing.assert_array_equal(tokens_BP, _PROMPT_BP)
    np.testing.assert_array_equal(positions_BP, [[0, 1, 2], [0, 1, 2]])
    for i, (tokens_B1, positions_B1) in enumerate(calls[1:]):
        np.testing.assert_array_equal(tokens_B1, np.asarray(out_BL)[:, i : i + 1])
        np.testing.assert_array_equal(positions_B1, [[3 + i], [3 + i]])
        assert tokens_B1.dtype == np.int32 and positions_B1.dtype == np.int32


def test_context_is_passed_through():
    table_VSV = _table(0, 8)
    out_BL = _greedy_table(_PROMPT_BP, None, context=table_VSV)
    # Numpy reference: argmax of the table at (last token, its position).
    table = np.asarray(table_VSV)
    expected = []
    for row in np.asarray(_PROMPT_BP):
        token, new = row[-1], []
        for position in range(2, 7):
            token = int(np.argmax(table[token, position]))
            new.append(token)
        expected.append(new)
    np.testing.assert_array_equal(out_BL, expected)


# Sampling against greedy, and randomness.


_sample_table = jax.jit(
    functools.partial(sample, table_step, max_new_tokens=5),
    static_argnames=("temperature", "top_k"),
)


def test_greedy_equals_sample_at_temperature_zero():
    table_VSV = _table(1, 8)
    expected_BL = _greedy_table(_PROMPT_BP, None, context=table_VSV)
    got_BL = _sample_table(
        _PROMPT_BP, None, jax.random.key(0), temperature=0.0, context=table_VSV
    )
    np.testing.assert_array_equal(got_BL, expected_BL)
    # Python int 0 is temperature 0 too, and the rng may then be None.
    got_BL = _sample_table(_PROMPT_BP, None, None, temperature=0, context=table_VSV)
    np.testing.assert_array_equal(got_BL, expected_BL)


def test_top_k_one_equals_greedy():
    table_VSV = _table(2, 8)
    expected_BL = _greedy_table(_PROMPT_BP, None, context=table_VSV)
    for seed in range(3):
        got_BL = _sample_table(
            _PROMPT_BP, None, jax.random.key(seed), temperature=1.5, top_k=1,
            context=table_VSV,
        )
        np.testing.assert_array_equal(got_BL, expected_BL)


def test_fixed_key_reproduces_and_different_keys_differ():
    table_VSV = 0.1 * _table(3, 8)  # Nearly flat: many different sequences are likely.
    draw = functools.partial(_sample_table, _PROMPT_BP, None, temperature=1.0,
                             context=table_VSV)
    a_BL = draw(jax.random.key(0))
    np.testing.assert_array_equal(a_BL, draw(jax.random.key(0)))
    assert not np.array_equal(a_BL, draw(jax.random.key(1)))
    # Every step draws fresh randomness: rows are not one repeated token.
    assert len(np.unique(np.asarray(a_BL))) > 2
    # Legacy uint32 keys work as well.
    np.testing.assert_array_equal(draw(jax.random.PRNGKey(5)), draw(jax.random.PRNGKey(5)))


def test_sampled_frequencies_over_the_loop_match_filtered_distribution():
    logits_V = jnp.array([1.0, 2.0, -1.0, 0.5, 1.5, -2.0, 0.0, 0.2, -0.3, 0.7, 1.1])
    temperature, top_k, batch, new = 0.8, 4, 2_000, 6

    def constant_step(tokens_BT, cache, positions_BT, context):
        del positions_BT, context
        return jnp.broadcast_to(logits_V, tokens_BT.shape + (V,)), cache

    prompt_BP = jnp.zeros((batch, 2), jnp.int32)
    tokens_BL = np.asarray(
        make_generate_fn(constant_step, max_new_tokens=new, temperature=temperature,
                         top_k=top_k)(prompt_BP, None, jax.random.key(9))
    )
    tokens = tokens_BL.ravel()
    logits = np.asarray(logits_V)
    kept = logits >= np.sort(logits)[-top_k]
    p = np.where(kept, np.exp(logits / temperature), 0.0)
    p /= p.sum()
    counts = np.bincount(tokens, minlength=V)
    n = tokens.size
    np.testing.assert_array_equal(counts[~kept], 0)
    sigma = np.sqrt(n * p[kept] * (1 - p[kept]))
    assert (np.abs(counts[kept] - n * p[kept]) < 4.5 * sigma).all(), (counts, n * p)
    # Steps draw independently (a fresh key each step): consecutive tokens agree with
    # probability sum(p^2), not 1.
    pairs = batch * (new - 1)
    agree = (tokens_BL[:, 1:] == tokens_BL[:, :-1]).sum()
    q = (p**2).sum()
    assert abs(agree - pairs * q) < 4.5 * np.sqrt(pairs * q * (1 - q)), (agree, pairs * q)


# Compilation: once per shape.


def test_make_generate_fn_traces_once_per_shape():
    traced_lengths = []

    def counting_step(tokens_BT, cache, positions_BT, context):
        traced_lengths.append(tokens_BT.shape)  # Runs only while tracing.
        return increment_step(tokens_BT, cache, positions_BT, context)

    generate = make_generate_fn(counting_step, max_new_tokens=3, temperature=0.0)
    a_BL = generate(jnp.array([[1, 2]]), jnp.zeros(()))
    b_BL = generate(jnp.array([[7, 8]]), jnp.zeros(()))
    np.testing.assert_array_equal(a_BL, [[3, 4, 5]])
    np.testing.assert_array_equal(b_BL, [[9, 10, 0]])
    # One trace: the prefill call [1, 2] and the scan body [1, 1].
    assert traced_lengths == [(1, 2), (1, 1)]
    generate(jnp.array([[1, 2, 3]]), jnp.zeros(()))
    assert traced_lengths == [(1, 2), (1, 1), (1, 3), (1, 1)]


def test_outer_jit_traces_once_per_shape_with_params_as_arguments():
    traces = []

    @jax.jit
    def model_generate(params_VSV, prompt_BP, rng):
        traces.append(prompt_BP.shape)

        def step_fn(tokens_BT, cache, positions_BT, context):
            # The model side closes over jit arguments, never over constants.
            return params_VSV[tokens_BT, positions_BT], cache

        return sample(step_fn, prompt_BP, None, rng, max_new_tokens=5, top_k=1)

    params_VSV = _table(4, 8)
    expected_BL = _greedy_table(_PROMPT_BP, None, context=params_VSV)
    np.testing.assert_array_equal(
        model_generate(params_VSV, _PROMPT_BP, jax.random.key(0)), expected_BL
    )
    model_generate(_table(5, 8), _PROMPT_BP[::-1], jax.random.key(1))
    assert traces == [(2, 3)]
    model_generate(params_VSV, _PROMPT_BP[:1], jax.random.key(0))
    assert traces == [(2, 3), (1, 3)]


# The loop state.


def test_sampling_state_is_a_pytree_with_named_fields():
    state = SamplingState(
        cache={"k": jnp.zeros((2, 4))},
        token_B=jnp.zeros(2, jnp.int32),
        position_B=jnp.full(2, 3, jnp.int32),
        rng=jax.random.key(0),
    )
    assert len(jax.tree.leaves(state)) == 4
    moved = jax.tree.map(lambda x: x, state)
    assert isinstance(moved, SamplingState)
    assert [f.name for f in dataclasses.fields(SamplingState)] == [
        "cache", "token_B", "position_B", "rng",
    ]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.token_B = None  # type: ignore[misc]
    # Greedy keeps no key: None is an empty subtree.
    assert len(jax.tree.leaves(dataclasses.replace(state, rng=None))) == 3


# Errors.


@pytest.mark.parametrize(
    "prompt_BP, match",
    [
        (jnp.array([1, 2, 3]), "prompt_BP"),
        (jnp.zeros((1, 2, 3), jnp.int32), "prompt_BP"),
        (jnp.zeros((2, 0), jnp.int32), "P >= 1"),
        (jnp.zeros((2, 3), jnp.float32), "integer"),
    ],
)
def test_bad_prompt_is_refused(prompt_BP, match):
    with pytest.raises(ValueError, match=match):
        greedy(increment_step, prompt_BP, None, max_new_tokens=2)


@pytest.mark.parametrize("bad", [0, -1])
def test_max_new_tokens_must_be_positive(bad):
    with pytest.raises(ValueError, match="max_new_tokens"):
        greedy(increment_step, _PROMPT_BP, None, max_new_tokens=bad)
    with pytest.raises(ValueError, match="max_new_tokens"):
        make_generate_fn(increment_step, max_new_tokens=bad)


@pytest.mark.parametrize("bad", [1.5, True, None])
def test_max_new_tokens_must_be_an_int(bad):
    with pytest.raises(TypeError, match="max_new_tokens"):
        greedy(increment_step, _PROMPT_BP, None, max_new_tokens=bad)


def test_bad_sampling_options_are_refused_before_any_step():
    def exploding_step(*args):
        raise AssertionError("step_fn must not be called")

    key = jax.random.key(0)
    with pytest.raises(ValueError, match="temperature"):
        sample(exploding_step, _PROMPT_BP, None, key, max_new_tokens=2, temperature=-1.0)
    with pytest.raises(ValueError, match="top_k"):
        sample(exploding_step, _PROMPT_BP, None, key, max_new_tokens=2, top_k=0)
    with pytest.raises(ValueError, match="rng"):
        sample(exploding_step, _PROMPT_BP, None, None, max_new_tokens=2)
    with pytest.raises(ValueError, match="temperature"):
        make_generate_fn(exploding_step, max_new_tokens=2, temperature=float("nan"))
    with pytest.raises(ValueError, match="rng"):
        make_generate_fn(exploding_step, max_new_tokens=2)(_PROMPT_BP, None)


def test_step_fn_contract_violations_are_named():
    def flat_logits_step(tokens_BT, cache, positions_BT, context):
        return jnp.zeros(tokens_BT.shape[:1] + (V,)), cache

    with pytest.raises(ValueError, match=r"logits of shape \[B, T, V\] = \[2, 3, V\]"):
        greedy(flat_logits_step, _PROMPT_BP, None, max_new_tokens=2)

    def growing_cache_step(tokens_BT, cache, positions_BT, context):
        logits_BTV, _ = increment_step(tokens_BT, cache, positions_BT, context)
        return logits_BTV, jnp.concatenate([cache, tokens_BT], axis=1)

    with pytest.raises(ValueError, match="cache"):
        greedy(growing_cache_step, _PROMPT_BP, jnp.zeros((2, 0), jnp.int32), max_new_tokens=2)
