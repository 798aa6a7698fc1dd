"""Mask builders against numpy formulas, and their invariants."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flaxzoo.layers import causal_mask, padding_mask
from flaxzoo.layers.masks import segment_mask, sliding_window_mask


@settings(max_examples=40, deadline=None)
@given(q_len=st.integers(1, 9), extra=st.integers(0, 9))
def test_causal_mask_aligned_to_end_of_keys(q_len, extra):
    kv_len = q_len + extra
    mask = np.asarray(causal_mask(q_len, kv_len))
    i, j = np.meshgrid(np.arange(q_len), np.arange(kv_len), indexing="ij")
    np.testing.assert_array_equal(mask, j <= i + extra)
    # The last query always sees every key; each query sees at least one key.
    assert mask[-1].all() and mask.any(axis=1).all()


def test_causal_mask_square_is_lower_triangular():
    np.testing.assert_array_equal(causal_mask(5), np.tril(np.ones((5, 5), bool)))


def test_causal_mask_explicit_and_per_row_offsets():
    np.testing.assert_array_equal(
        causal_mask(2, 6, offset=1), np.array([[1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0]], bool)
    )
    per_row = np.asarray(causal_mask(2, 6, offset=jnp.array([0, 3])))
    assert per_row.shape == (2, 1, 2, 6)
    np.testing.assert_array_equal(per_row[0, 0], causal_mask(2, 6, offset=0))
    np.testing.assert_array_equal(per_row[1, 0], causal_mask(2, 6, offset=3))


def test_causal_mask_errors():
    with pytest.raises(ValueError, match="kv_len"):
        causal_mask(4, 2)
    with pytest.raises(ValueError, match="q_len"):
        causal_mask(0)


def test_padding_mask_shapes_and_combination_with_causal():
    valid = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool)
    key_only = np.asarray(padding_mask(valid))
    assert key_only.shape == (2, 1, 1, 4)
    both = np.asarray(padding_mask(valid, valid))
    np.testing.assert_array_equal(both[:, 0], valid[:, :, None] & valid[:, None, :])
    combined = np.asarray(padding_mask(valid) & causal_mask(4))
    np.testing.assert_array_equal(combined[1, 0], np.tril(np.ones((4, 4), bool)) & valid[1][None, :])
    with pytest.raises(ValueError, match="kv_valid"):
        padding_mask(np.ones(4, bool))


# --- sliding_window_mask -------------------------------------------------------------


def numpy_window(q_len, kv_len, offset, window, symmetric):
    """Query i (absolute position offset + i) vs key j, written out element by element."""
    out = np.zeros((q_len, kv_len), bool)
    for i in range(q_len):
        for j in range(kv_len):
            d = offset + i - j
            out[i, j] = abs(d) < window if symmetric else 0 <= d < window
    return out


@settings(max_examples=25, deadline=None)
@given(q_len=st.integers(1, 8), extra=st.integers(0, 8), window=st.integers(1, 10),
       symmetric=st.booleans())
def test_sliding_window_matches_numpy(q_len, extra, window, symmetric):
    kv_len = q_len + extra
    mask = np.asarray(sliding_window_mask(q_len, kv_len, window=window, symmetric=symmetric))
    assert mask.shape == (q_len, kv_len) and mask.dtype == bool
    np.testing.assert_array_equal(mask, numpy_window(q_len, kv_len, extra, window, symmetric))


def test_sliding_window_hand_written():
    # window=1 sees only the query's own position; window=2 adds the previous key.
    np.testing.assert_array_equal(sliding_window_mask(3, window=1), np.eye(3, dtype=bool))
    np.testing.assert_array_equal(
        sliding_window_mask(4, window=2),
        np.array([[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]], bool),
    )
    np.testing.assert_array_equal(
        sliding_window_mask(4, window=2, symmetric=True),
        np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]], bool),
    )
    # One decoding step at position 5 of 6 cached keys, window 3: keys 3, 4, 5.
    np.testing.assert_array_equal(
        sliding_window_mask(1, 6, window=3), np.array([[0, 0, 0, 1, 1, 1]], bool)
    )


@settings(max_examples=25, deadline=None)
@given(q_len=st.integers(1, 8), extra=st.integers(0, 8), slack=st.integers(0, 4))
def test_sliding_window_wider_than_keys_is_causal(q_len, extra, slack):
    kv_len = q_len + extra
    np.testing.assert_array_equal(
        sliding_window_mask(q_len, kv_len, window=kv_len + slack), causal_mask(q_len, kv_len)
    )


@settings(max_examples=25, deadline=None)
@given(length=st.integers(1, 10), window=st.integers(1, 12))
def test_symmetric_window_is_symmetric_and_contains_the_causal_window(length, window):
    sym = np.asarray(sliding_window_mask(length, window=window, symmetric=True))
    np.testing.assert_array_equal(sym, sym.T)
    causal = np.asarray(sliding_window_mask(length, window=window))
    np.testing.assert_array_equal(sym, causal | causal.T)


@settings(max_examples=25, deadline=None)
@given(q_len=st.integers(1, 6), kv_len=st.integers(1, 10), offset=st.integers(0, 10),
       window=st.integers(1, 8), symmetric=st.booleans())
def test_sliding_window_with_offset_is_a_slice_of_the_full_mask(
    q_len, kv_len, offset, window, symmetric
):
    full_len = max(kv_len, offset + q_len)
    full = np.asarray(sliding_window_mask(full_len, window=window, symmetric=symmetric))
    part = np.asarray(
        sliding_window_mask(q_len, kv_len, window=window, offset=offset, symmetric=symmetric)
    )
    np.testing.assert_array_equal(part, full[offset : offset + q_len, :kv_len])


def test_sliding_window_per_row_offsets_and_jit():
    offsets = jnp.array([0, 2, 5])
    per_row = np.asarray(sliding_window_mask(2, 7, window=3, offset=offsets))
    assert per_row.shape == (3, 1, 2, 7)
    for b, off in enumerate([0, 2, 5]):
        np.testing.assert_array_equal(per_row[b, 0], numpy_window(2, 7, off, 3, False))
    # The offset may be traced (cached decoding); the window is static.
    jitted = jax.jit(lambda off: sliding_window_mask(1, 7, window=3, offset=off))
    np.testing.assert_array_equal(jitted(4), numpy_window(1, 7, 4, 3, False))


def test_sliding_window_combines_with_causal_and_padding():
    valid = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]], bool)
    window = np.asarray(sliding_window_mask(5, window=2, symmetric=True))
    combined = np.asarray(window & causal_mask(5) & padding_mask(valid))
    assert combined.shape == (2, 1, 5, 5)
    for b in range(2):
        expected = numpy_window(5, 5, 0, 2, False) & valid[b][None, :]
        np.testing.assert_array_equal(combined[b, 0], expected)


def test_sliding_window_errors():
    with pytest.raises(ValueError, match="window"):
        sliding_window_mask(4, window=0)
    with pytest.raises(ValueError, match="window"):
        sliding_window_mask(4, window=2.5)
    with pytest.raises(ValueError, match="kv_len"):
        sliding_window_mask(4, 2, window=2)
    with pytest.raises(ValueError, match="q_len"):
        sliding_window_mask(0, window=2)
    with pytest.raises(ValueError, match="offset"):
        sliding_window_mask(2, 4, window=2, offset=np.zeros((2, 2), int))


# --- segment_mask ----------------------------------------------------------------------


def test_segment_mask_matches_numpy():
    q_ids = np.array([[1, 1, 2, 2, 0], [3, 3, 3, 0, 0]])
    kv_ids = np.array([[1, 2, 2, 0], [0, 3, 0, 3]])
    mask = np.asarray(segment_mask(q_ids, kv_ids))
    assert mask.shape == (2, 1, 5, 4) and mask.dtype == bool
    np.testing.assert_array_equal(mask[:, 0], q_ids[:, :, None] == kv_ids[:, None, :])
    padded = np.asarray(segment_mask(q_ids, kv_ids, padding_id=0))
    real = (q_ids[:, :, None] != 0) & (kv_ids[:, None, :] != 0)
    np.testing.assert_array_equal(padded[:, 0], (q_ids[:, :, None] == kv_ids[:, None, :]) & real)
    # Self-attention default, and padding rows fully masked with padding_id=0.
    np.testing.assert_array_equal(segment_mask(q_ids), segment_mask(q_ids, q_ids))
    assert not np.asarray(segment_mask(q_ids, padding_id=0))[1, 0, 3:].any()


def block_diagonal(blocks, size):
    out = np.zeros((size, size), bool)
    start = 0
    for block in blocks:
        n = block.shape[0]
        out[start : start + n, start : start + n] = block
        start += n
    return out


@settings(max_examples=25, deadline=None)
@given(rows=st.lists(st.lists(st.integers(1, 3), min_size=1, max_size=3), min_size=1,
                     max_size=3),
       pad=st.integers(0, 2))
def test_packed_causal_mask_is_block_diagonal(rows, pad):
    total = max(sum(lengths) for lengths in rows) + pad
    ids = np.zeros((len(rows), total), np.int32)
    for b, lengths in enumerate(rows):
        ids[b, : sum(lengths)] = np.repeat(np.arange(1, len(lengths) + 1), lengths)
    plain = np.asarray(causal_mask(total) & segment_mask(ids))
    padded = np.asarray(causal_mask(total) & segment_mask(ids, padding_id=0))
    assert plain.shape == padded.shape == (len(rows), 1, total, total)
    for b, lengths in enumerate(rows):
        n_pad = total - sum(lengths)
        tril = [np.tril(np.ones((n, n), bool)) for n in lengths]
        # Plain equality: padding is one more segment that only sees itself.
        np.testing.assert_array_equal(
            plain[b, 0], block_diagonal(tril + [np.tril(np.ones((n_pad, n_pad), bool))], total)
        )
        # padding_id=0: padding neither attends nor is attended.
        np.testing.assert_array_equal(padded[b, 0], block_diagonal(tril, total))


def test_segment_mask_errors():
    ids = np.ones((2, 3), np.int32)
    with pytest.raises(ValueError, match="q_segment_ids"):
        segment_mask(np.ones(3, np.int32))
    with pytest.raises(ValueError, match="kv_segment_ids"):
        segment_mask(ids, np.ones((3, 3), np.int32))
    with pytest.raises(ValueError, match="kv_segment_ids"):
        segment_mask(ids, np.ones((2, 3, 1), np.int32))
    with pytest.raises(ValueError, match="q_segment_ids"):
        segment_mask(np.ones((2, 3), np.float32))
