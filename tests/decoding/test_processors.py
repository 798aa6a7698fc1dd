"""Logit processors against numpy formulas, and the token sampler's distribution.

Dimension key: B batch, V vocab, T tokens.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from flaxzoo.decoding import (
    apply_temperature,
    repetition_penalty,
    sample_next_token,
    seen_tokens,
    suppress_token,
    top_k_filter,
    top_p_filter,
)

# Numpy references, written from the definitions rather than from the implementation.


def _np_softmax(x_BV):
    x_BV = np.asarray(x_BV, np.float64)
    z_BV = np.exp(x_BV - x_BV.max(axis=-1, keepdims=True))
    return z_BV / z_BV.sum(axis=-1, keepdims=True)


def _np_top_k(x_BV, k):
    """Keep every entry >= the row's k-th largest value (ties at the threshold kept)."""
    if k is None or k >= x_BV.shape[-1]:
        return x_BV
    kth_B1 = np.sort(x_BV, axis=-1)[:, -k][:, None]
    return np.where(x_BV >= kth_B1, x_BV, -np.inf)


def _np_top_p(x_BV, p):
    """Add tokens from the most likely down until their mass reaches p; keep every
    token whose logit ties with the last one added."""
    if p is None:
        return x_BV
    out_BV = np.array(x_BV, copy=True)
    for b, row_V in enumerate(np.asarray(x_BV)):
        probs_V = _np_softmax(row_V[None])[0]
        mass = 0.0
        for i in np.argsort(-row_V, kind="stable"):
            mass += probs_V[i]
            threshold = row_V[i]
            if mass >= p:
                break
        out_BV[b] = np.where(row_V >= threshold, row_V, -np.inf)
    return out_BV


def _np_repetition_penalty(x_BV, seen_BV, penalty):
    out_BV = np.array(x_BV, copy=True)
    for b, v in zip(*np.nonzero(seen_BV)):
        x = out_BV[b, v]
        out_BV[b, v] = x / np.float32(penalty) if x > 0 else x * np.float32(penalty)
    return out_BV


def _cumulative_masses(x_BV):
    """Every prefix mass of every row sorted by logit (to keep p off the boundary)."""
    probs_BV = -np.sort(-_np_softmax(x_BV), axis=-1)
    return np.cumsum(probs_BV, axis=-1).ravel()


_logits_strategy = dict(
    vocab=st.integers(1, 9),
    seed=st.integers(0, 2**16),
    coarse=st.booleans(),
)


def _random_logits(vocab, seed, coarse):
    """float32 [3, 9]: `vocab` real logits per row, then -inf (tokens already filtered).

    One shape for every example, so the ops compile once.
    """
    rng = np.random.default_rng(seed)
    if coarse:  # Few distinct values, so ties at the boundary are common.
        logits_BV = rng.integers(0, 3, size=(3, 9)).astype(np.float32)
    else:
        logits_BV = rng.normal(size=(3, 9)).astype(np.float32)
    logits_BV[:, vocab:] = -np.inf
    return logits_BV


# apply_temperature


@pytest.mark.parametrize("temperature", [0.25, 0.7, 1.0, 3.0])
def test_apply_temperature_matches_numpy(temperature):
    logits_BV = np.random.default_rng(0).normal(size=(4, 11)).astype(np.float32)
    got_BV = apply_temperature(jnp.asarray(logits_BV), temperature)
    np.testing.assert_allclose(got_BV, logits_BV / np.float32(temperature), rtol=1e-6)
    np.testing.assert_allclose(jax.nn.softmax(got_BV, axis=-1),
                               _np_softmax(logits_BV / temperature), rtol=1e-5, atol=1e-6)


def test_apply_temperature_keeps_dtype_and_minus_inf():
    logits_BV = jnp.array([[1.0, -jnp.inf, 2.0]], jnp.bfloat16)
    out_BV = apply_temperature(logits_BV, 0.5)
    assert out_BV.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out_BV, np.float32), [[2.0, -np.inf, 4.0]])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_apply_temperature_rejects_non_positive_or_non_finite(bad):
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature(jnp.zeros((1, 3)), bad)


def test_apply_temperature_rejects_arrays_and_bad_logits():
    with pytest.raises(TypeError, match="temperature"):
        apply_temperature(jnp.zeros((1, 3)), jnp.float32(0.5))
    with pytest.raises(ValueError, match="logits_BV"):
        apply_temperature(jnp.zeros(3), 0.5)
    with pytest.raises(ValueError, match="logits_BV"):
        apply_temperature(jnp.zeros((1, 3), jnp.int32), 0.5)


# top_k_filter


@settings(max_examples=30, deadline=None)
@given(k=st.integers(1, 11), **_logits_strategy)
def test_top_k_filter_matches_numpy(vocab, k, seed, coarse):
    logits_BV = _random_logits(vocab, seed, coarse)
    got_BV = np.asarray(top_k_filter(jnp.asarray(logits_BV), k))
    np.testing.assert_array_equal(got_BV, _np_top_k(logits_BV, k))
    # Properties: at least min(k, V) kept, and every kept logit beats every dropped one.
    kept_BV = np.isfinite(got_BV)
    assert (kept_BV.sum(axis=-1) >= min(k, vocab)).all()
    for row_V, keep_V in zip(logits_BV, kept_BV):
        if (~keep_V).any():
            assert row_V[keep_V].min() > row_V[~keep_V].max()
    np.testing.assert_array_equal(got_BV[kept_BV], logits_BV[kept_BV])


def test_top_k_filter_ties_at_the_threshold_are_all_kept():
    logits_BV = jnp.array([[3.0, 3.0, 1.0], [0.0, 2.0, 2.0], [5.0, 1.0, 1.0]])
    got = np.asarray(top_k_filter(logits_BV, 2))
    np.testing.assert_array_equal(got, [[3.0, 3.0, -np.inf], [-np.inf, 2.0, 2.0], [5.0, 1.0, 1.0]])
    got = np.asarray(top_k_filter(logits_BV, 1))
    np.testing.assert_array_equal(
        got, [[3.0, 3.0, -np.inf], [-np.inf, 2.0, 2.0], [5.0, -np.inf, -np.inf]])


def test_top_k_filter_large_k_is_identity_and_dtype_kept():
    logits_BV = jnp.array([[0.5, -1.0, 2.0]], jnp.bfloat16)
    for k in (3, 4, 100):
        out_BV = top_k_filter(logits_BV, k)
        assert out_BV.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(out_BV, np.float32), [[0.5, -1.0, 2.0]])
    out_BV = top_k_filter(logits_BV, 1)
    assert out_BV.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out_BV, np.float32), [[-np.inf, -np.inf, 2.0]])


def test_top_k_filter_errors():
    for k in (0, -2):
        with pytest.raises(ValueError, match=f"k must be.*got {k}"):
            top_k_filter(jnp.zeros((1, 4)), k)
    for k in (1.5, True, jnp.int32(2), None):
        with pytest.raises(TypeError, match="k must be"):
            top_k_filter(jnp.zeros((1, 4)), k)
    with pytest.raises(ValueError, match="logits_BV"):
        top_k_filter(jnp.zeros((2, 2, 4)), 2)


# top_p_filter


@settings(max_examples=40, deadline=None)
@given(p=st.floats(0.01, 1.0), **_logits_strategy)
def test_top_p_filter_matches_numpy(vocab, p, seed, coarse):
    logits_BV = _random_logits(vocab, seed, coarse)
    # float32 cumulative sums may fall either side of p when p is on the boundary.
    assume(p == 1.0 or np.abs(_cumulative_masses(logits_BV) - p).min() > 1e-4)
    got_BV = np.asarray(top_p_filter(jnp.asarray(logits_BV), p))
    np.testing.assert_array_equal(got_BV, _np_top_p(logits_BV, p))
    # Properties: the argmax is kept, the kept mass reaches p, and the kept set is the
    # smallest: without its least likely tied group the mass falls below p.
    probs_BV = _np_softmax(logits_BV)
    kept_BV = np.isfinite(got_BV)
    for row_V, keep_V, probs_V in zip(logits_BV, kept_BV, probs_BV):
        assert keep_V[np.argmax(row_V)]
        assert probs_V[keep_V].sum() >= p - 1e-6
        smaller_V = keep_V & (row_V > row_V[keep_V].min())
        assert probs_V[smaller_V].sum() < p
        if (~keep_V).any():
            assert row_V[keep_V].min() > row_V[~keep_V].max()


def test_top_p_filter_known_rows():
    # probs of [ln 5, ln 3, ln 2, 0] are [0.5, 0.3, 0.2, 0.1] / 1.1 ~ [.4545, .2727, .1818, .0909].
    logits_BV = jnp.log(jnp.array([[5.0, 3.0, 2.0, 1.0]]))
    for p, kept in [(0.3, 1), (0.4545, 1), (0.46, 2), (0.72, 2), (0.73, 3), (0.9, 3),
                    (0.95, 4), (1.0, 4)]:
        got_V = np.asarray(top_p_filter(logits_BV, p))[0]
        np.testing.assert_array_equal(np.isfinite(got_V), np.arange(4) < kept, err_msg=str(p))
        np.testing.assert_array_equal(got_V[:kept], np.asarray(logits_BV)[0, :kept])


def test_top_p_filter_ties_at_the_boundary_are_all_kept():
    # [2, 2, 0]: each 2 has mass ~0.47; p = 0.3 is reached by the first, its tie stays.
    logits_BV = jnp.array([[2.0, 2.0, 0.0], [0.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    got = np.asarray(top_p_filter(logits_BV, 0.3))
    np.testing.assert_array_equal(
        got, [[2.0, 2.0, -np.inf], [-np.inf, 1.0, 1.0], [1.0, 1.0, 1.0]])


def test_top_p_filter_always_keeps_one_token_and_p_one_keeps_all():
    logits_BV = jnp.array([[10.0, 0.0, -10.0, -jnp.inf]])
    got = np.asarray(top_p_filter(logits_BV, 1e-6))
    np.testing.assert_array_equal(got, [[10.0, -np.inf, -np.inf, -np.inf]])
    for p in (1.0, 1):
        np.testing.assert_array_equal(top_p_filter(logits_BV, p), logits_BV)


def test_top_p_filter_dtype_kept():
    logits_BV = jnp.array([[0.5, -1.0, 2.0]], jnp.bfloat16)
    out_BV = top_p_filter(logits_BV, 0.5)
    assert out_BV.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out_BV, np.float32), [[-np.inf, -np.inf, 2.0]])


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), float("inf")])
def test_top_p_filter_rejects_p_outside_zero_one(bad):
    with pytest.raises(ValueError, match=r"p must be.*\(0, 1\]"):
        top_p_filter(jnp.zeros((1, 4)), bad)


def test_top_p_filter_rejects_non_floats():
    for bad in (None, True, jnp.float32(0.5)):
        with pytest.raises(TypeError, match="p must be"):
            top_p_filter(jnp.zeros((1, 4)), bad)


# repetition_penalty, seen_tokens, suppress_token


@pytest.mark.parametrize("penalty", [0.5, 1.0, 1.3, 4.0])
def test_repetition_penalty_matches_numpy(penalty):
    rng = np.random.default_rng(3)
    logits_BV = rng.normal(size=(4, 9)).astype(np.float32)
    logits_BV[0, 0] = 0.0
    seen_BV = rng.random((4, 9)) < 0.5
    seen_BV[0, 0] = True
    got_BV = np.asarray(repetition_penalty(jnp.asarray(logits_BV), jnp.asarray(seen_BV), penalty))
    expected_BV = _np_repetition_penalty(logits_BV, seen_BV, penalty)
    np.testing.assert_allclose(got_BV, expected_BV, rtol=1e-6)
    np.testing.assert_array_equal(got_BV[~seen_BV], logits_BV[~seen_BV])  # Unseen untouched.
    if penalty > 1:  # Every seen token became less likely (or stayed at 0).
        assert (got_BV[seen_BV] <= logits_BV[seen_BV]).all()
        assert (got_BV[seen_BV & (logits_BV != 0)] < logits_BV[seen_BV & (logits_BV != 0)]).all()


def test_repetition_penalty_applies_once_per_distinct_token():
    tokens_BT = jnp.array([[2, 2, 2, 5], [5, 1, 1, 1]])
    logits_BV = jnp.array([[1.0, 2.0, 4.0, -1.0, 0.5, -2.0],
                           [1.0, 2.0, 4.0, -1.0, 0.5, -2.0]])
    seen_BV = seen_tokens(tokens_BT, 6)
    got_BV = repetition_penalty(logits_BV, seen_BV, 2.0)
    np.testing.assert_array_equal(got_BV, [[1.0, 2.0, 2.0, -1.0, 0.5, -4.0],
                                           [1.0, 1.0, 4.0, -1.0, 0.5, -4.0]])


def test_repetition_penalty_errors_and_dtype():
    logits_BV = jnp.array([[1.0, -1.0]], jnp.bfloat16)
    out_BV = repetition_penalty(logits_BV, jnp.array([[True, True]]), 2.0)
    assert out_BV.dtype == jnp.bfloat16
    np.testing.assert_array_equal(np.asarray(out_BV, np.float32), [[0.5, -2.0]])
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="penalty"):
            repetition_penalty(logits_BV, jnp.array([[True, True]]), bad)
    with pytest.raises(TypeError, match="penalty"):
        repetition_penalty(logits_BV, jnp.array([[True, True]]), jnp.float32(2.0))
    with pytest.raises(ValueError, match="seen_BV"):
        repetition_penalty(logits_BV, jnp.array([True, True]), 2.0)


def test_seen_tokens_matches_numpy_and_skips_padding():
    rng = np.random.default_rng(4)
    tokens_BT = rng.integers(0, 7, size=(5, 6))
    valid_BT = rng.random((5, 6)) < 0.6
    earlier_BV = rng.random((5, 7)) < 0.2
    expected_BV = np.zeros((5, 7), bool)
    for b, t in zip(*np.nonzero(valid_BT)):
        expected_BV[b, tokens_BT[b, t]] = True
    got_BV = seen_tokens(jnp.asarray(tokens_BT), 7, jnp.asarray(valid_BT))
    assert got_BV.dtype == jnp.bool_ and got_BV.shape == (5, 7)
    np.testing.assert_array_equal(got_BV, expected_BV)
    np.testing.assert_array_equal(
        seen_tokens(jnp.asarray(tokens_BT), 7, jnp.asarray(valid_BT), jnp.asarray(earlier_BV)),
        expected_BV | earlier_BV)
    # Default: every token counts.
    all_BV = np.zeros((5, 7), bool)
    all_BV[np.arange(5)[:, None], tokens_BT] = True
    np.testing.assert_array_equal(seen_tokens(jnp.asarray(tokens_BT), 7), all_BV)
    # A padding token whose id also occurs as a real token is still seen.
    np.testing.assert_array_equal(
        seen_tokens(jnp.array([[0, 0, 3, 0]]), 4, jnp.array([[False, False, True, True]])),
        [[True, False, False, True]])
    np.testing.assert_array_equal(
        seen_tokens(jnp.array([[0, 0, 3]]), 4, jnp.array([[False, False, True]])),
        [[False, False, False, True]])
    with pytest.raises(ValueError, match="tokens_BT"):
        seen_tokens(jnp.array([1, 2]), 4)


def test_suppress_token_matches_numpy():
    logits_BV = np.random.default_rng(5).normal(size=(3, 5)).astype(np.float32)
    suppress_B = np.array([True, False, True])
    expected_BV = logits_BV.copy()
    expected_BV[suppress_B, 2] = -np.inf
    np.testing.assert_array_equal(
        suppress_token(jnp.asarray(logits_BV), 2, jnp.asarray(suppress_B)), expected_BV)
    # A scalar applies to every row.
    expected_BV = logits_BV.copy()
    expected_BV[:, 4] = -np.inf
    np.testing.assert_array_equal(suppress_token(jnp.asarray(logits_BV), 4, True), expected_BV)
    np.testing.assert_array_equal(suppress_token(jnp.asarray(logits_BV), 4, False), logits_BV)
    assert suppress_token(jnp.zeros((1, 3), jnp.bfloat16), 0, True).dtype == jnp.bfloat16
    for bad in (-1, 5):
        with pytest.raises(ValueError, match="token_id"):
            suppress_token(jnp.asarray(logits_BV), bad, True)
    with pytest.raises(TypeError, match="token_id"):
        suppress_token(jnp.asarray(logits_BV), 1.0, True)


# sample_next_token


def test_temperature_zero_is_argmax_without_rng():
    logits_BV = jnp.asarray(np.random.default_rng(1).normal(size=(16, 10)), jnp.float32)
    tokens_B = sample_next_token(logits_BV, None, temperature=0.0, top_k=3, top_p=0.5)
    assert tokens_B.dtype == jnp.int32 and tokens_B.shape == (16,)
    np.testing.assert_array_equal(tokens_B, np.argmax(np.asarray(logits_BV), axis=-1))
    # Python int 0 is accepted too; the first index wins among equal maxima.
    tied_BV = jnp.array([[1.0, 2.0, 2.0]])
    np.testing.assert_array_equal(sample_next_token(tied_BV, None, temperature=0), [1])
    # A key, if given, changes nothing.
    np.testing.assert_array_equal(
        sample_next_token(logits_BV, jax.random.key(0), temperature=0.0), tokens_B)


def test_top_k_one_and_tiny_top_p_are_argmax_at_any_temperature():
    logits_BV = jnp.asarray(np.random.default_rng(2).normal(size=(64, 10)), jnp.float32)
    expected_B = np.argmax(np.asarray(logits_BV), axis=-1)
    for seed, temperature in [(0, 0.5), (1, 1.0), (2, 5.0)]:
        key = jax.random.key(seed)
        np.testing.assert_array_equal(
            sample_next_token(logits_BV, key, temperature=temperature, top_k=1), expected_B)
        np.testing.assert_array_equal(
            sample_next_token(logits_BV, key, temperature=temperature, top_p=1e-4), expected_B)


def test_fixed_key_reproduces_and_different_keys_differ():
    logits_BV = jnp.zeros((64, 16))
    draw = functools.partial(sample_next_token, logits_BV, temperature=1.0)
    a_B = draw(jax.random.key(7))
    np.testing.assert_array_equal(a_B, draw(jax.random.key(7)))
    assert not np.array_equal(a_B, draw(jax.random.key(8)))
    # Legacy uint32 keys work as well.
    np.testing.assert_array_equal(draw(jax.random.PRNGKey(3)), draw(jax.random.PRNGKey(3)))


_LOGITS_V = np.array([2.0, -1.0, 0.5, 1.5, -3.0, 0.0, 1.0, -0.5], np.float32)
_draw = jax.jit(sample_next_token, static_argnames=("temperature", "top_k", "top_p"))


@pytest.mark.parametrize(
    "temperature, top_k, top_p",
    [
        (0.7, 3, None),
        (2.0, None, None),
        (1.0, 5, None),
        (1.0, None, 0.8),
        (0.5, None, 0.9),  # Top-p after temperature keeps 3; before it, 5.
        (1.5, 6, 0.7),  # Top-p after top-k keeps 3; before it, 4.
    ],
)
def test_empirical_frequencies_match_filtered_distribution(temperature, top_k, top_p):
    n = 20_000
    logits_BV = jnp.broadcast_to(jnp.asarray(_LOGITS_V), (n, _LOGITS_V.size))
    tokens_B = np.asarray(_draw(logits_BV, jax.random.key(42), temperature=temperature,
                                top_k=top_k, top_p=top_p))
    filtered_1V = _np_top_p(_np_top_k(_LOGITS_V[None] / temperature, top_k), top_p)
    expected_V = _np_softmax(filtered_1V)[0]
    counts_V = np.bincount(tokens_B, minlength=_LOGITS_V.size)
    # Filtered tokens never appear.
    np.testing.assert_array_equal(counts_V[expected_V == 0], 0)
    # Every count within 4.5 sigma of its binomial mean, and a chi-square bound.
    kept_V = expected_V > 0
    mean_V = n * expected_V[kept_V]
    sigma_V = np.sqrt(n * expected_V[kept_V] * (1 - expected_V[kept_V]))
    assert (np.abs(counts_V[kept_V] - mean_V) < 4.5 * sigma_V).all(), (counts_V, n * expected_V)
    chi2 = (((counts_V[kept_V] - mean_V) ** 2) / mean_V).sum()
    assert chi2 < 30.0, chi2  # dof <= 7: P(chi2 > 30) < 1e-4.


def test_rows_draw_from_their_own_logits():
    # Row b can only produce token b: the rows of one call are not mixed up.
    logits_BV = jnp.where(jnp.eye(6, dtype=bool), 0.0, -jnp.inf)
    tokens_B = sample_next_token(logits_BV, jax.random.key(0), temperature=1.3, top_p=0.9)
    np.testing.assert_array_equal(tokens_B, np.arange(6))


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_sample_next_token_rejects_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        sample_next_token(jnp.zeros((1, 3)), jax.random.key(0), temperature=bad)


def test_sample_next_token_errors():
    with pytest.raises(ValueError, match="rng"):
        sample_next_token(jnp.zeros((1, 3)), None, temperature=1.0)
    with pytest.raises(ValueError, match="top_k"):
        sample_next_token(jnp.zeros((1, 3)), None, temperature=0.0, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        sample_next_token(jnp.zeros((1, 3)), None, temperature=0.0, top_p=1.5)
    with pytest.raises(ValueError, match="logits_BV"):
        sample_next_token(jnp.zeros((1, 1, 3)), None, temperature=0.0)
