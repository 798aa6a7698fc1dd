"""sinusoidal_positions against the paper's formula written in numpy; relative_positions."""

import numpy as np
import pytest

from flaxzoo.layers import relative_positions, sinusoidal_positions


def numpy_sinusoid(positions, dim):
    pe = np.zeros((len(positions), dim))
    for row, p in enumerate(positions):
        for i in range(0, dim, 2):
            pe[row, i] = np.sin(p / 10000 ** (i / dim))
            pe[row, i + 1] = np.cos(p / 10000 ** (i / dim))
    return pe


def test_interleaved_matches_paper_formula_including_extrapolation():
    positions = np.array([0, 1, 5, 77, 5000])  # far beyond any training length
    np.testing.assert_allclose(sinusoidal_positions(positions, 16), numpy_sinusoid(positions, 16),
                               atol=2e-4)


def test_halves_layout_is_a_permutation_of_interleaved():
    pos = np.arange(10)
    inter = np.asarray(sinusoidal_positions(pos, 8))
    halves = np.asarray(sinusoidal_positions(pos, 8, layout="halves"))
    np.testing.assert_allclose(halves[:, :4], inter[:, 0::2])
    np.testing.assert_allclose(halves[:, 4:], inter[:, 1::2])


def test_any_position_shape():
    assert sinusoidal_positions(np.zeros((2, 3), int), 6).shape == (2, 3, 6)


@pytest.mark.parametrize("dim, layout, match", [(7, "interleaved", "even"), (0, "interleaved", "even"),
                                                (8, "zigzag", "layout")])
def test_errors(dim, layout, match):
    with pytest.raises(ValueError, match=match):
        sinusoidal_positions(np.arange(3), dim, layout=layout)


def test_relative_positions_is_key_minus_query_with_batch_broadcast():
    q_pos = np.array([[3, 4], [10, 11]])          # [B=2, T=2], e.g. two cache offsets
    k_pos = np.arange(5)                          # [S=5], shared by the batch
    rel = np.asarray(relative_positions(q_pos, k_pos))
    assert rel.shape == (2, 2, 5) and rel.dtype == np.int32
    np.testing.assert_array_equal(rel, k_pos[None, None, :] - q_pos[:, :, None])
    assert relative_positions(np.arange(2), np.arange(3)).shape == (1, 2, 3)


@pytest.mark.parametrize("q_pos, k_pos, match", [
    (np.arange(3.0), np.arange(3), "query_positions must be integers"),
    (np.arange(3), np.zeros((1, 2, 3), int), "key_positions must have shape"),
    (np.zeros((2, 3), int), np.zeros((3, 3), int), "same batch size"),
])
def test_relative_positions_errors_name_the_argument(q_pos, k_pos, match):
    with pytest.raises(ValueError, match=match):
        relative_positions(q_pos, k_pos)
