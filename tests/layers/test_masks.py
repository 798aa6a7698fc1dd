"""Mask builders against numpy formulas, and their invariants."""

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flaxzoo.layers import causal_mask, padding_mask


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
