"""alibi_slopes and alibi_bias against the paper's construction written in the test,
Hugging Face BLOOM (slopes and attention weights with padding) and properties."""

import math

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flaxzoo.layers.alibi import alibi_bias, alibi_slopes
from flaxzoo.layers.attention import dot_product_attention

FAST = settings(max_examples=30, deadline=None)


def numpy_slopes(n):
    """The ALiBi paper's construction, recursively, in float64."""
    if math.log2(n).is_integer():
        start = 2.0 ** (-(2.0 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]
    below = 2 ** math.floor(math.log2(n))
    return numpy_slopes(below) + numpy_slopes(2 * below)[0::2][: n - below]


def numpy_bias(slopes, q_pos, k_pos, bidirectional):
    q_pos, k_pos = np.atleast_2d(q_pos), np.atleast_2d(k_pos)
    B = max(len(q_pos), len(k_pos))
    q_pos, k_pos = np.broadcast_to(q_pos, (B, q_pos.shape[1])), np.broadcast_to(k_pos, (B, k_pos.shape[1]))
    out = np.zeros((B, len(slopes), q_pos.shape[1], k_pos.shape[1]))
    for b in range(B):
        for n, m in enumerate(slopes):
            for t, q in enumerate(q_pos[b]):
                for s, k in enumerate(k_pos[b]):
                    out[b, n, t, s] = -m * abs(q - k) if bidirectional else m * (k - q)
    return out


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


# ---------------------------------------------------------------- slopes


def test_slopes_for_eight_heads_are_powers_of_one_half():
    np.testing.assert_allclose(alibi_slopes(8), [2.0**-i for i in range(1, 9)], rtol=1e-7)


@pytest.mark.parametrize("num_heads", list(range(1, 34)) + [48, 64, 80])
def test_slopes_match_the_paper_construction(num_heads):
    got = alibi_slopes(num_heads)
    assert got.dtype == np.float32 and got.shape == (num_heads,)
    np.testing.assert_allclose(got, numpy_slopes(num_heads), rtol=1e-6)


def test_slopes_match_bloom_for_1_to_33_heads():
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    for num_heads in range(1, 34):
        # With no padding, BLOOM's bias at key position 1 is the slope itself.
        alibi = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), num_heads, torch.float32)
        np.testing.assert_allclose(alibi_slopes(num_heads), alibi[:, 0, 1].numpy(), rtol=1e-6,
                                   err_msg=f"num_heads={num_heads}")


# ---------------------------------------------------------------- bias


@pytest.mark.parametrize("bidirectional", [False, True])
def test_bias_matches_numpy_formula(bidirectional):
    slopes = alibi_slopes(3)
    q_pos, k_pos = np.array([4, 5, 6]), np.arange(7)  # a cache offset of 4
    got = alibi_bias(slopes, q_pos, k_pos, bidirectional=bidirectional)
    assert got.shape == (1, 3, 3, 7) and got.dtype == np.float32
    np.testing.assert_allclose(got, numpy_bias(np.asarray(slopes), q_pos, k_pos, bidirectional),
                               rtol=1e-6)


def test_bias_with_batched_positions_broadcasts_the_other():
    slopes = np.array([0.5, 0.25], np.float32)
    q_pos = np.array([[2, 3], [7, 8]])
    k_pos = np.arange(9)
    got = alibi_bias(slopes, q_pos, k_pos)
    assert got.shape == (2, 2, 2, 9)
    np.testing.assert_allclose(got, numpy_bias(slopes, q_pos, k_pos, False), rtol=1e-6)
    np.testing.assert_array_equal(jax.jit(alibi_bias)(slopes, q_pos, k_pos), got)  # traced positions
    k_rows = np.array([[0, 1, 2, 3], [5, 6, 7, 8]])
    np.testing.assert_allclose(alibi_bias(slopes, q_pos, k_rows, bidirectional=True),
                               numpy_bias(slopes, q_pos, k_rows, True), rtol=1e-6)


def test_large_positions_stay_exact():
    # Distances are formed in integers, so a long cache does not cost precision.
    got = alibi_bias(np.array([0.5], np.float32), np.array([10_000_001]), np.array([10_000_000]))
    assert float(got[0, 0, 0, 0]) == -0.5


@pytest.mark.parametrize("num_heads", [3, 4, 12])
def test_attention_weights_match_bloom_with_left_padding(num_heads):
    """BLOOM adds slope * k with k counted over real tokens only; after the mask and
    softmax, that equals our causal slope * (k - q) with the same positions."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from transformers.models.bloom.modeling_bloom import build_alibi_tensor

    rng = np.random.default_rng(0)
    B, T, H = 3, 6, 4
    valid = np.ones((B, T), bool)
    valid[1, :2] = False  # left padding
    valid[2, :5] = False
    q = rng.normal(size=(B, T, num_heads, H)).astype(np.float32)
    k = rng.normal(size=(B, T, num_heads, H)).astype(np.float32)
    v = rng.normal(size=(B, T, num_heads, H)).astype(np.float32)

    # BLOOM: scores = alibi + q.k / sqrt(H), masked with the dtype minimum, softmax.
    alibi = build_alibi_tensor(torch.tensor(valid, dtype=torch.long), num_heads, torch.float32)
    alibi = alibi.reshape(B, num_heads, 1, T)
    scores = torch.einsum("btnh,bsnh->bnts", torch.tensor(q), torch.tensor(k)) / math.sqrt(H) + alibi
    allowed = torch.tril(torch.ones(T, T, dtype=torch.bool)) & torch.tensor(valid)[:, None, None, :]
    scores = scores.masked_fill(~allowed, torch.finfo(torch.float32).min)
    ref = torch.softmax(scores, dim=-1).numpy()

    positions = np.maximum(np.cumsum(valid, axis=1) - 1, 0)
    bias = alibi_bias(alibi_slopes(num_heads), positions, positions)
    _, weights = dot_product_attention(q, k, v, mask=allowed.numpy(), bias=bias, return_weights=True)
    weights = np.asarray(weights)
    rows = np.broadcast_to(valid[:, None, :], weights.shape[:3])  # padded queries differ by design
    np.testing.assert_allclose(weights[rows], ref[rows], atol=1e-6)
    # Not a vacuous comparison: without the bias the weights differ.
    _, plain = dot_product_attention(q, k, v, mask=allowed.numpy(), return_weights=True)
    assert np.abs(np.asarray(plain)[rows] - ref[rows]).max() > 1e-2


# ---------------------------------------------------------------- properties


@FAST
@given(seed=st.integers(0, 2**31 - 1), num_heads=st.integers(1, 9), offset=st.integers(0, 50),
       q_len=st.integers(1, 4))
def test_causal_bias_equals_bloom_form_through_softmax(seed, num_heads, offset, q_len):
    rng = np.random.default_rng(seed)
    S = offset + q_len
    q_pos, k_pos = np.arange(offset, S), np.arange(S)
    slopes = np.asarray(alibi_slopes(num_heads), np.float64)
    logits = rng.normal(size=(num_heads, q_len, S))
    causal = k_pos[None, :] <= q_pos[:, None]
    ours = np.asarray(alibi_bias(slopes, q_pos, k_pos), np.float64)[0]
    bloom = slopes[:, None, None] * k_pos[None, None, :]  # slope * k, constant per row shift
    w_ours = _softmax(np.where(causal, logits + ours, -np.inf))
    w_bloom = _softmax(np.where(causal, logits + bloom, -np.inf))
    np.testing.assert_allclose(w_ours, w_bloom, atol=1e-6)
    # The biases themselves differ by -slope * q along each row.
    np.testing.assert_allclose(ours - bloom, -slopes[:, None, None] * q_pos[None, :, None] * np.ones(S),
                               atol=1e-3)


@FAST
@given(seed=st.integers(0, 2**31 - 1), shift=st.integers(-100, 100), bidirectional=st.booleans())
def test_bias_depends_only_on_relative_position(seed, shift, bidirectional):
    rng = np.random.default_rng(seed)
    q_pos, k_pos = rng.integers(100, 200, size=(2, 3)), rng.integers(100, 200, size=(2, 5))
    slopes = alibi_slopes(4)
    a = alibi_bias(slopes, q_pos, k_pos, bidirectional=bidirectional)
    b = alibi_bias(slopes, q_pos + shift, k_pos + shift, bidirectional=bidirectional)
    np.testing.assert_array_equal(a, b)


@FAST
@given(seed=st.integers(0, 2**31 - 1), num_heads=st.integers(1, 16))
def test_bias_signs_symmetry_and_agreement_in_the_past(seed, num_heads):
    rng = np.random.default_rng(seed)
    q_pos, k_pos = rng.integers(0, 30, size=4), rng.integers(0, 30, size=6)
    slopes = alibi_slopes(num_heads)
    causal = np.asarray(alibi_bias(slopes, q_pos, k_pos))[0]
    bidir = np.asarray(alibi_bias(slopes, q_pos, k_pos, bidirectional=True))[0]
    past = k_pos[None, :] <= q_pos[:, None]
    np.testing.assert_array_equal(causal[:, past], bidir[:, past])
    assert (bidir <= 0).all()
    assert (bidir[:, q_pos[:, None] == k_pos[None, :]] == 0).all()
    # Swapping queries and keys transposes the bidirectional bias.
    swapped = np.asarray(alibi_bias(slopes, k_pos, q_pos, bidirectional=True))[0]
    np.testing.assert_array_equal(swapped, bidir.transpose(0, 2, 1))
    # A farther key never gets a larger bias; every slope is in (0, 1).
    order = np.argsort(np.abs(k_pos - q_pos[0]), kind="stable")
    assert (np.diff(bidir[:, 0, order], axis=-1) <= 0).all()
    assert ((np.asarray(slopes) > 0) & (np.asarray(slopes) < 1)).all()


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("bad", [0, -2, 2.0, True, "8"])
def test_slopes_reject_bad_head_counts(bad):
    with pytest.raises(ValueError, match="num_heads must be a positive int"):
        alibi_slopes(bad)


def test_bias_errors_name_the_argument():
    slopes = alibi_slopes(2)
    pos = np.arange(3)
    with pytest.raises(ValueError, match=r"slopes must have shape \[heads\]; got \(1, 2\)"):
        alibi_bias(slopes[None], pos, pos)
    with pytest.raises(ValueError, match="query_positions must be integers"):
        alibi_bias(slopes, pos.astype(np.float32), pos)
    with pytest.raises(ValueError, match=r"key_positions must have shape .*got \(1, 1, 3\)"):
        alibi_bias(slopes, pos, pos[None, None])
    with pytest.raises(ValueError, match=r"same batch size.*\(2, 3\) and \(3, 3\)"):
        alibi_bias(slopes, np.zeros((2, 3), int), np.zeros((3, 3), int))
