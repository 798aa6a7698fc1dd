"""Logit processors against numpy formulas, and the token sampler's distribution.

Dimension key: B batch, V vocab.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flaxzoo.decoding import apply_temperature, sample_next_token, top_k_filter


def _np_softmax(x_BV):
    z = np.exp(x_BV - x_BV.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _np_top_k(x_BV, k):
    """Keep every entry >= the row's k-th largest value (ties at the threshold kept)."""
    if k >= x_BV.shape[-1]:
        return x_BV
    kth_B1 = np.sort(x_BV, axis=-1)[:, -k][:, None]
    return np.where(x_BV >= kth_B1, x_BV, -np.inf)


# apply_temperature


@pytest.mark.parametrize("temperature", [0.25, 0.7, 1.0, 3.0])
def test_apply_temperature_matches_numpy_softmax(temperature):
    logits_BV = np.random.default_rng(0).normal(size=(4, 11)).astype(np.float32)
    got = jax.nn.softmax(apply_temperature(jnp.asarray(logits_BV), temperature), axis=-1)
    np.testing.assert_allclose(got, _np_softmax(logits_BV / temperature), rtol=1e-5, atol=1e-6)


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
@given(
    batch=st.integers(1, 3),
    vocab=st.integers(1, 9),
    k=st.integers(1, 11),
    seed=st.integers(0, 2**16),
    coarse=st.booleans(),
)
def test_top_k_filter_matches_numpy(batch, vocab, k, seed, coarse):
    rng = np.random.default_rng(seed)
    logits_BV = rng.normal(size=(batch, vocab)).astype(np.float32)
    if coarse:  # Few distinct values, so ties at the k-th value are common.
        logits_BV = rng.integers(0, 3, size=(batch, vocab)).astype(np.float32)
    got_BV = np.asarray(top_k_filter(jnp.asarray(logits_BV), k))
    np.testing.assert_array_equal(got_BV, _np_top_k(logits_BV, k))
    kept_BV = np.isfinite(got_BV)
    assert (kept_BV.sum(axis=-1) >= min(k, vocab)).all()


def test_top_k_filter_ties_at_the_threshold_are_all_kept():
    logits_BV = jnp.array([[3.0, 3.0, 1.0], [0.0, 2.0, 2.0]])
    got = np.asarray(top_k_filter(logits_BV, 1))
    np.testing.assert_array_equal(got, [[3.0, 3.0, -np.inf], [-np.inf, 2.0, 2.0]])


def test_top_k_filter_large_k_is_identity_and_dtype_kept():
    logits_BV = jnp.array([[0.5, -1.0, 2.0]], jnp.bfloat16)
    for k in (3, 4, 100):
        out_BV = top_k_filter(logits_BV, k)
        assert out_BV.dtype == jnp.bfloat16
        np.testing.assert_array_equal(np.asarray(out_BV, np.float32), [[0.5, -1.0, 2.0]])
    assert top_k_filter(logits_BV, 1).dtype == jnp.bfloat16


def test_top_k_filter_errors():
    for k in (0, -2):
        with pytest.raises(ValueError, match="k must be"):
            top_k_filter(jnp.zeros((1, 4)), k)
    for k in (1.5, True, jnp.int32(2)):
        with pytest.raises(TypeError, match="k must be"):
            top_k_filter(jnp.zeros((1, 4)), k)
    with pytest.raises(ValueError, match="logits_BV"):
        top_k_filter(jnp.zeros((2, 2, 4)), 2)


# sample_next_token


def test_temperature_zero_is_argmax_without_rng():
    logits_BV = jnp.asarray(np.random.default_rng(1).normal(size=(16, 10)), jnp.float32)
    tokens_B = sample_next_token(logits_BV, None, temperature=0.0, top_k=3)
    assert tokens_B.dtype == jnp.int32 and tokens_B.shape == (16,)
    np.testing.assert_array_equal(tokens_B, np.argmax(np.asarray(logits_BV), axis=-1))
    # Python int 0 is accepted too; the first index wins among equal maxima.
    tied_BV = jnp.array([[1.0, 2.0, 2.0]])
    np.testing.assert_array_equal(sample_next_token(tied_BV, None, temperature=0), [1])


def test_top_k_one_is_argmax_at_any_temperature():
    logits_BV = jnp.asarray(np.random.default_rng(2).normal(size=(64, 10)), jnp.float32)
    expected_B = np.argmax(np.asarray(logits_BV), axis=-1)
    for seed, temperature in [(0, 0.5), (1, 1.0), (2, 5.0)]:
        got_B = sample_next_token(
            logits_BV, jax.random.key(seed), temperature=temperature, top_k=1
        )
        np.testing.assert_array_equal(got_B, expected_B)


def test_fixed_key_reproduces_and_different_keys_differ():
    logits_BV = jnp.zeros((64, 16))
    draw = functools.partial(sample_next_token, logits_BV, temperature=1.0)
    a_B = draw(jax.random.key(7))
    np.testing.assert_array_equal(a_B, draw(jax.random.key(7)))
    assert not np.array_equal(a_B, draw(jax.random.key(8)))
    # Legacy uint32 keys work as well.
    np.testing.assert_array_equal(draw(jax.random.PRNGKey(3)), draw(jax.random.PRNGKey(3)))


_LOGITS_V = np.array([2.0, -1.0, 0.5, 1.5, -3.0, 0.0, 1.0, -0.5], np.float32)


@pytest.mark.parametrize("temperature, top_k", [(0.7, 3), (2.0, None), (1.0, 5)])
def test_empirical_frequencies_match_filtered_distribution(temperature, top_k):
    n = 20_000
    logits_BV = jnp.broadcast_to(jnp.asarray(_LOGITS_V), (n, _LOGITS_V.size))
    tokens_B = np.asarray(
        jax.jit(
            functools.partial(sample_next_token, temperature=temperature, top_k=top_k)
        )(logits_BV, jax.random.key(42))
    )
    k = _LOGITS_V.size if top_k is None else top_k
    expected_V = _np_softmax(_np_top_k(_LOGITS_V[None], k) / temperature)[0]
    counts_V = np.bincount(tokens_B, minlength=_LOGITS_V.size)
    # Tokens outside the top k never appear.
    np.testing.assert_array_equal(counts_V[expected_V == 0], 0)
    # Every count within 4.5 sigma of its binomial mean, and a chi-square bound.
    kept = expected_V > 0
    mean_V = n * expected_V[kept]
    sigma_V = np.sqrt(n * expected_V[kept] * (1 - expected_V[kept]))
    assert (np.abs(counts_V[kept] - mean_V) < 4.5 * sigma_V).all(), (counts_V, n * expected_V)
    chi2 = (((counts_V[kept] - mean_V) ** 2) / mean_V).sum()
    assert chi2 < 30.0, chi2  # dof <= 7: P(chi2 > 30) < 1e-4.


@pytest.mark.parametrize("bad", [-0.5, float("nan"), float("inf")])
def test_sample_next_token_rejects_bad_temperature(bad):
    with pytest.raises(ValueError, match="temperature"):
        sample_next_token(jnp.zeros((1, 3)), jax.random.key(0), temperature=bad)


def test_sample_next_token_errors():
    with pytest.raises(ValueError, match="rng"):
        sample_next_token(jnp.zeros((1, 3)), None, temperature=1.0)
    with pytest.raises(ValueError, match="top_k"):
        sample_next_token(jnp.zeros((1, 3)), None, temperature=0.0, top_k=0)
    with pytest.raises(ValueError, match="logits_BV"):
        sample_next_token(jnp.zeros((1, 1, 3)), None, temperature=0.0)
